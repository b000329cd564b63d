// LayerNorm forward/backward. One warp per row for the row-wise parts; the
// weight/bias gradients are column sums done in two deterministic stages.

#define ROWS_PER_BLOCK 8  // 8 warps of 32 threads

extern "C" __global__ void layernorm_fwd_k(void* out, int dto, void* mean, int dtm, void* rstd, int dtr,
                                           const void* inp, int dti, const void* w, int dtw, const void* b,
                                           int dtb, i64 n, int c, float eps) {
    int lane = threadIdx.x & 31;
    i64 row = (i64)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= n) return;
    i64 base = row * c;
    float s = 0.0f;
    for (int j = lane; j < c; j += 32) s += ld(inp, dti, base + j);
    float mu = warp_sum(s) / c;
    float v = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float d = ld(inp, dti, base + j) - mu;
        v += d * d;
    }
    float rs = 1.0f / sqrtf(warp_sum(v) / c + eps);
    for (int j = lane; j < c; j += 32) {
        float xh = (ld(inp, dti, base + j) - mu) * rs;
        st(out, dto, base + j, xh * ld(w, dtw, j) + ld(b, dtb, j));
    }
    if (lane == 0) {
        st(mean, dtm, row, mu);
        st(rstd, dtr, row, rs);
    }
}

// dinp += rstd * (dn - mean(dn) - xhat * mean(dn * xhat)), dn = dout * w.
extern "C" __global__ void layernorm_bwd_dx_k(void* dinp, int dtdi, const void* dout, int dtdo, const void* inp,
                                              int dti, const void* w, int dtw, const void* mean, int dtm,
                                              const void* rstd, int dtr, i64 n, int c) {
    int lane = threadIdx.x & 31;
    i64 row = (i64)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= n) return;
    i64 base = row * c;
    float mu = ld(mean, dtm, row), rs = ld(rstd, dtr, row);
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float dn = ld(dout, dtdo, base + j) * ld(w, dtw, j);
        s1 += dn;
        s2 += dn * (ld(inp, dti, base + j) - mu) * rs;
    }
    s1 = warp_sum(s1) / c;
    s2 = warp_sum(s2) / c;
    for (int j = lane; j < c; j += 32) {
        float dn = ld(dout, dtdo, base + j) * ld(w, dtw, j);
        float xh = (ld(inp, dti, base + j) - mu) * rs;
        st(dinp, dtdi, base + j, ld(dinp, dtdi, base + j) + rs * (dn - s1 - xh * s2));
    }
}

// Stage 1 of dw/db: block (32, 8) over 32 columns and a chunk of rows;
// partial[chunk, 0, col] = sum dout*xhat, partial[chunk, 1, col] = sum dout.
extern "C" __global__ void layernorm_bwd_dw_partial_k(float* partial, const void* dout, int dtdo, const void* inp,
                                                      int dti, const void* mean, int dtm, const void* rstd,
                                                      int dtr, i64 n, int c, int rpc) {
    __shared__ float aw[8][33], ab[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    i64 r0 = (i64)blockIdx.y * rpc, r1 = min(n, r0 + rpc);
    float sw = 0.0f, sb = 0.0f;
    if (col < c)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8) {
            float d = ld(dout, dtdo, r * c + col);
            float xh = (ld(inp, dti, r * c + col) - ld(mean, dtm, r)) * ld(rstd, dtr, r);
            sw += d * xh;
            sb += d;
        }
    aw[threadIdx.y][threadIdx.x] = sw;
    ab[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        for (int y = 1; y < 8; y++) {
            sw += aw[y][threadIdx.x];
            sb += ab[y][threadIdx.x];
        }
        partial[((i64)blockIdx.y * 2) * c + col] = sw;
        partial[((i64)blockIdx.y * 2 + 1) * c + col] = sb;
    }
}

// Stage 2: dw[c] += sum_k partial[k,0,c]; db[c] += sum_k partial[k,1,c].
extern "C" __global__ void layernorm_bwd_dw_finish_k(void* dw, int dtw, void* db, int dtb, const float* partial,
                                                     int chunks, int c) {
    GRID_LOOP(j, (i64)c) {
        float sw = 0.0f, sb = 0.0f;
        for (int k = 0; k < chunks; k++) {
            sw += partial[((i64)k * 2) * c + j];
            sb += partial[((i64)k * 2 + 1) * c + j];
        }
        st(dw, dtw, j, ld(dw, dtw, j) + sw);
        st(db, dtb, j, ld(db, dtb, j) + sb);
    }
}

// ---- bf16 activations (fp32 w, b, mean, rstd): block-per-row kernels ----
// One thread per 16-byte chunk of a row (common.cuh, "Block-per-row norm
// kernels").

// dinp (+=) for rows [blockIdx.x * rpb, +rpb) and the block's dw and db
// partial sums into partial[blockIdx.x * c ..] and partial[(gridDim.x +
// blockIdx.x) * c ..]; colsum_finish_k adds the blocks of each.
extern "C" __global__ void __launch_bounds__(512) layernorm_bwd_bf16_k(__nv_bfloat16* dinp, const __nv_bfloat16* dout,
                                                const __nv_bfloat16* inp, const float* w, const float* mean,
                                                const float* rstd, float* partial, i64 n, int c, int rpb) {
    norm_bwd_cols<true>(dinp, dout, inp, w, mean, rstd, partial, partial + (i64)gridDim.x * c, n, c, rpb);
}

// out = layernorm(row), mean and rstd saved, for every row the block walks
// (blocks walk rows gridDim.x apart, fetching the next row first): the
// row's mean, then its variance about the mean (two block sums, as the
// general kernel's two passes). With ADD the row is the residual sum a + bb,
// rounded to bf16 and stored into sum first, as in rmsnorm.cu.
template <bool ADD>
__device__ __forceinline__ void layernorm_fwd_cols(__nv_bfloat16* sum, __nv_bfloat16* out, float* mean, float* rstd,
                                                   const __nv_bfloat16* a, const __nv_bfloat16* bb, const float* w,
                                                   const float* b, i64 n, int c, float eps) {
    __shared__ float red[2 * 32];
    const int j = threadIdx.x * 8;
    const bool ok = j < c;
    float wv[8], bv[8];
    load_f32x8(w, j, ok, wv);
    load_f32x8(b, j, ok, bv);
    int phase = 0;
    walk_rows<ADD>(a, bb, n, c, j, ok, [&](i64 row, uint4 ca, uint4 cb) {
        float x[8], s[1] = {0.0f};
        if (ADD) add_rounded(x, ca, cb, sum, row, c, j, ok);
        else unpack_bf16x8(ca, x);
#pragma unroll
        for (int k = 0; k < 8; k++) s[0] += x[k];
        block_sums<1>(s, red, phase);
        const float mu = s[0] / c;
        s[0] = 0.0f;
        if (ok)
#pragma unroll
            for (int k = 0; k < 8; k++) s[0] += (x[k] - mu) * (x[k] - mu);
        block_sums<1>(s, red, phase);
        const float rs = 1.0f / sqrtf(s[0] / c + eps);
        if (ok) {
            float o[8];
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = (x[k] - mu) * rs * wv[k] + bv[k];
            store_bf16x8(out + row * c + j, o);
        }
        if (threadIdx.x == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    });
}

extern "C" __global__ void __launch_bounds__(512) layernorm_fwd_bf16_k(__nv_bfloat16* out, float* mean, float* rstd,
                                                const __nv_bfloat16* inp, const float* w, const float* b, i64 n,
                                                int c, float eps) {
    layernorm_fwd_cols<false>(nullptr, out, mean, rstd, inp, nullptr, w, b, n, c, eps);
}

// The residual add fused in: sum = a + bb (stored, bf16), out = layernorm(sum).
extern "C" __global__ void __launch_bounds__(512) add_layernorm_fwd_bf16_k(__nv_bfloat16* sum, __nv_bfloat16* out, float* mean,
                                                    float* rstd, const __nv_bfloat16* a, const __nv_bfloat16* bb,
                                                    const float* w, const float* b, i64 n, int c, float eps) {
    layernorm_fwd_cols<true>(sum, out, mean, rstd, a, bb, w, b, n, c, eps);
}
