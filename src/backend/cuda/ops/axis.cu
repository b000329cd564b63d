// Per-row / per-column sums of squares and broadcast scaling of a row-major
// x[rows, cols]: APOLLO's channel norms and channel scaling. Sums accumulate
// in fp64 and are stored as f32; every reduction has a fixed order (no
// atomics), so results are reproducible run to run.

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32); every thread gets it.
// `tmp`: 32 doubles of shared memory, reusable right after the call.
__device__ __forceinline__ double block_sum_f64(double v, double* tmp) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();  // the previous call's readers are done with tmp
    if (lane == 0) tmp[warp] = v;
    __syncthreads();
    double r = lane < (int)(blockDim.x >> 5) ? tmp[lane] : 0.0;
    return warp_sum_f64(r);
}

// out[r] = sum_j x[r, j]^2. One block per row (grid-stride over rows);
// thread t takes columns t, t + blockDim.x, ... (coalesced).
extern "C" __global__ void row_sumsq_k(void* out, int dto, const void* x, int dt, i64 rows, i64 cols) {
    __shared__ double tmp[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        double acc = 0.0;
        for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
            double v = (double)ld(x, dt, r * cols + j);
            acc += v * v;
        }
        acc = block_sum_f64(acc, tmp);
        if (threadIdx.x == 0) st(out, dto, r, (float)acc);
    }
}

// out[j] = sum_i x[i, j]^2. Block (32, COL_LANES): threadIdx.x picks one of
// 32 adjacent columns (coalesced rows), threadIdx.y walks rows y, y +
// COL_LANES, ... in order; the lanes' partials are then added in lane order.
#define COL_LANES 32
extern "C" __global__ void col_sumsq_k(void* out, int dto, const void* x, int dt, i64 rows, i64 cols) {
    __shared__ double part[COL_LANES][33];
    i64 j = (i64)blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (j < cols) {
        for (i64 i = threadIdx.y; i < rows; i += COL_LANES) {
            double v = (double)ld(x, dt, i * cols + j);
            acc += v * v;
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        double s = 0.0;
        for (int y = 0; y < COL_LANES; y++) s += part[y][threadIdx.x];
        st(out, dto, j, (float)s);
    }
}

// x[i, j] *= s[i] (per_row) or s[j]. Rounded multiply, like the CPU.
extern "C" __global__ void scale_axis_k(void* x, int dt, const void* s, int dts, i64 rows, i64 cols, int per_row) {
    GRID_LOOP(i, rows * cols) {
        i64 k = per_row ? i / cols : i % cols;
        st(x, dt, i, __fmul_rn(ld(x, dt, i), ld(s, dts, k)));
    }
}
