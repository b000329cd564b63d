// RMSNorm forward/backward: out = x * rstd * w, rstd = 1/sqrt(mean(x^2)+eps).
// Same structure as layernorm.cu: warp per row, two-stage column sums.

#define ROWS_PER_BLOCK 8

extern "C" __global__ void rmsnorm_fwd_k(void* out, int dto, void* rstd, int dtr, const void* inp, int dti,
                                         const void* w, int dtw, i64 n, int c, float eps) {
    int lane = threadIdx.x & 31;
    i64 row = (i64)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= n) return;
    i64 base = row * c;
    float s = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float x = ld(inp, dti, base + j);
        s += x * x;
    }
    float rs = 1.0f / sqrtf(warp_sum(s) / c + eps);
    for (int j = lane; j < c; j += 32) st(out, dto, base + j, ld(inp, dti, base + j) * rs * ld(w, dtw, j));
    if (lane == 0) st(rstd, dtr, row, rs);
}

// dinp += rstd * (dn - xhat * mean(dn * xhat)), dn = dout * w, xhat = x * rstd.
extern "C" __global__ void rmsnorm_bwd_dx_k(void* dinp, int dtdi, const void* dout, int dtdo, const void* inp,
                                            int dti, const void* w, int dtw, const void* rstd, int dtr, i64 n,
                                            int c) {
    int lane = threadIdx.x & 31;
    i64 row = (i64)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= n) return;
    i64 base = row * c;
    float rs = ld(rstd, dtr, row);
    float s = 0.0f;
    for (int j = lane; j < c; j += 32) s += ld(dout, dtdo, base + j) * ld(w, dtw, j) * ld(inp, dti, base + j) * rs;
    s = warp_sum(s) / c;
    for (int j = lane; j < c; j += 32) {
        float dn = ld(dout, dtdo, base + j) * ld(w, dtw, j);
        float xh = ld(inp, dti, base + j) * rs;
        st(dinp, dtdi, base + j, ld(dinp, dtdi, base + j) + rs * (dn - xh * s));
    }
}

// Stage 1 of dw: partial[chunk, col] = sum over the chunk's rows of dout*xhat.
extern "C" __global__ void rmsnorm_bwd_dw_partial_k(float* partial, const void* dout, int dtdo, const void* inp,
                                                    int dti, const void* rstd, int dtr, i64 n, int c, int rpc) {
    __shared__ float aw[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    i64 r0 = (i64)blockIdx.y * rpc, r1 = min(n, r0 + rpc);
    float sw = 0.0f;
    if (col < c)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8)
            sw += ld(dout, dtdo, r * c + col) * ld(inp, dti, r * c + col) * ld(rstd, dtr, r);
    aw[threadIdx.y][threadIdx.x] = sw;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        for (int y = 1; y < 8; y++) sw += aw[y][threadIdx.x];
        partial[(i64)blockIdx.y * c + col] = sw;
    }
}

// ---- bf16 activations (fp32 w, rstd): block-per-row kernels --------------
// One thread per 16-byte chunk of a row (common.cuh, "Block-per-row norm
// kernels"); blocks walk rows gridDim.x apart, fetching the next row before
// reducing this one.

// out = rmsnorm(row), rstd saved, for every row the block walks; with ADD
// the row is the residual sum a + b, rounded to bf16 and stored into sum
// first (exactly what the separate add kernel stores and the norm would
// read back).
template <bool ADD>
__device__ __forceinline__ void rmsnorm_fwd_cols(__nv_bfloat16* sum, __nv_bfloat16* out, float* rstd,
                                                 const __nv_bfloat16* a, const __nv_bfloat16* b, const float* w,
                                                 i64 n, int c, float eps) {
    __shared__ float red[2 * 32];
    const int j = threadIdx.x * 8;
    const bool ok = j < c;
    float wv[8];
    load_f32x8(w, j, ok, wv);
    int phase = 0;
    walk_rows<ADD>(a, b, n, c, j, ok, [&](i64 row, uint4 ca, uint4 cb) {
        float x[8], s[1] = {0.0f};
        if (ADD) add_rounded(x, ca, cb, sum, row, c, j, ok);
        else unpack_bf16x8(ca, x);
#pragma unroll
        for (int k = 0; k < 8; k++) s[0] += x[k] * x[k];
        block_sums<1>(s, red, phase);
        const float rs = 1.0f / sqrtf(s[0] / c + eps);
        if (ok) {
            float o[8];
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = x[k] * rs * wv[k];
            store_bf16x8(out + row * c + j, o);
        }
        if (threadIdx.x == 0) rstd[row] = rs;
    });
}

extern "C" __global__ void __launch_bounds__(512) rmsnorm_fwd_bf16_k(__nv_bfloat16* out, float* rstd, const __nv_bfloat16* inp,
                                              const float* w, i64 n, int c, float eps) {
    rmsnorm_fwd_cols<false>(nullptr, out, rstd, inp, nullptr, w, n, c, eps);
}

// The residual add fused in: sum = a + b (stored, bf16), out = rmsnorm(sum).
extern "C" __global__ void __launch_bounds__(512) add_rmsnorm_fwd_bf16_k(__nv_bfloat16* sum, __nv_bfloat16* out, float* rstd,
                                                  const __nv_bfloat16* a, const __nv_bfloat16* b, const float* w,
                                                  i64 n, int c, float eps) {
    rmsnorm_fwd_cols<true>(sum, out, rstd, a, b, w, n, c, eps);
}

// dinp (+=) for rows [blockIdx.x * rpb, +rpb) and the block's dw partial
// sums into partial[blockIdx.x * c ..]; colsum_finish_k adds the blocks.
extern "C" __global__ void __launch_bounds__(512) rmsnorm_bwd_bf16_k(__nv_bfloat16* dinp, const __nv_bfloat16* dout,
                                              const __nv_bfloat16* inp, const float* w, const float* rstd,
                                              float* partial, i64 n, int c, int rpb) {
    norm_bwd_cols<false>(dinp, dout, inp, w, nullptr, rstd, partial, nullptr, n, c, rpb);
}
