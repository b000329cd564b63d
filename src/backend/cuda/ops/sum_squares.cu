// Global sum of squares (gradient norm): fp64 accumulation, per-block
// partials summed on the host in a fixed order (reproducible; the block
// reduction `block_sum_to` is in common.cuh).

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

// bf16 input (train.grad_dtype = bf16 gradients), 16-byte aligned: 8 values
// per load (the n % 8 tail scalar), same per-block partials.
extern "C" __global__ void sumsq_partial_bf16x8_k(double* partial, const __nv_bfloat16* x, i64 n) {
    double acc = 0.0;
    const uint4* x8 = reinterpret_cast<const uint4*>(x);
    GRID_LOOP(i, n / 8) {
        uint4 raw = x8[i];
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 f = __bfloat1622float2(h[k]);
            acc += (double)f.x * f.x + (double)f.y * f.y;
        }
    }
    GRID_LOOP(i, n % 8) {
        double v = __bfloat162float(x[n / 8 * 8 + i]);
        acc += v * v;
    }
    block_sum_to(partial, acc);
}
