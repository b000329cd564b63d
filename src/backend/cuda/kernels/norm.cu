// Global sum of squares (gradient norm): fp64 accumulation, per-block
// partials summed on the host in a fixed order (reproducible).

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// partial[blockIdx.x] = the sum of `acc` over the block.
__device__ void block_sum_to(double* partial, double acc) {
    __shared__ double tmp[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    acc = warp_sum_d(acc);
    if (lane == 0) tmp[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        double r = lane < (int)(blockDim.x >> 5) ? tmp[lane] : 0.0;
        r = warp_sum_d(r);
        if (lane == 0) partial[blockIdx.x] = r;
    }
}

extern "C" __global__ void sumsq_partial_k(double* partial, const void* x, int dt, i64 n) {
    double acc = 0.0;
    GRID_LOOP(i, n) {
        double v = (double)ld(x, dt, i);
        acc += v * v;
    }
    block_sum_to(partial, acc);
}

// fp32 input, 16-byte aligned: float4 loads (the n % 4 tail scalar), same
// per-block partials.
extern "C" __global__ void sumsq_partial_f32x4_k(double* partial, const float* x, i64 n) {
    double acc = 0.0;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    GRID_LOOP(i, n / 4) {
        float4 v = x4[i];
        acc += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
    }
    GRID_LOOP(i, n % 4) {
        double v = x[n / 4 * 4 + i];
        acc += v * v;
    }
    block_sum_to(partial, acc);
}
