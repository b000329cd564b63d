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
