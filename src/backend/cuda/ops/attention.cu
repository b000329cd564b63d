// Flash-style causal attention (forward and backward), fp32 math on
// tiles in shared memory; no S x S matrix is ever stored.
//
// qkv rows (n = b*T + t) are [q heads (H*D) | k heads (KV*D) | v heads (KV*D)];
// query head h reads kv head h / (H/KV). out is [N, H*D]; lse is [B, H, T].
//
// Work split (CUDA cores, no tensor-core MMA yet): a block owns 32 rows
// (queries, or keys in the dK/dV kernel) of one head; each of its 8 warps
// owns 4 rows. Scores of a 32-wide tile are computed lane-per-key (full
// dot product from shared memory, rows padded by one float so lanes hit
// distinct banks); the weighted sums are lane-per-dimension (D = 32*DP),
// with the per-key weight broadcast by a shuffle.

#define TILE 32
#define WARPS 8
#define RPW (TILE / WARPS)  // rows per warp

struct AttnDims {
    int B, T, H, KV;
};

__device__ __forceinline__ i64 qcol(const AttnDims& a, int h, int d) { return (i64)h * d; }
__device__ __forceinline__ i64 kcol(const AttnDims& a, int g, int d) { return (i64)(a.H + g) * d; }
__device__ __forceinline__ i64 vcol(const AttnDims& a, int g, int d) { return (i64)(a.H + a.KV + g) * d; }

// Load rows [r0, r0+TILE) of one head (column offset `col`, `hd` values a
// row) into smem with row stride `ld`, padded with zeros to D columns;
// rows >= T are zero. Zero columns add nothing to the dot products, so a
// head size hd <= D = 32*DP runs on the D kernel.
__device__ __forceinline__ void load_tile(float* dst, int ld_, const void* src, int dt, i64 row_base, int r0, int T,
                                          i64 width, i64 col, int D, int hd) {
    for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x) {
        int r = idx / D, d = idx % D;
        int t = r0 + r;
        dst[r * ld_ + d] = t < T && d < hd ? ld(src, dt, (row_base + t) * width + col + d) : 0.0f;
    }
}

template <int DP>
__device__ void attn_fwd(void* out, int dto, void* lse, int dtl, const void* qkv, int dtq, AttnDims a, int hd) {
    const int D = DP * 32;  // padded: the head size hd is at most D
    extern __shared__ float smem[];
    float* sq = smem;               // [TILE][D]
    float* sk = sq + TILE * D;      // [TILE][D+1]
    float* sv = sk + TILE * (D + 1);  // [TILE][D]
    int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    int g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * hd, rb = (i64)b * a.T;
    float scale = 1.0f / sqrtf((float)hd);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_tile(sq, D, qkv, dtq, rb, q0, a.T, W, qcol(a, h, hd), D, hd);
    float m[RPW], l[RPW], o[RPW][DP];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int p = 0; p < DP; p++) o[r][p] = 0.0f;
    }
    int kend = min(a.T, q0 + TILE);
    for (int k0 = 0; k0 < kend; k0 += TILE) {
        __syncthreads();
        load_tile(sk, D + 1, qkv, dtq, rb, k0, a.T, W, kcol(a, g, hd), D, hd);
        load_tile(sv, D, qkv, dtq, rb, k0, a.T, W, vcol(a, g, hd), D, hd);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int rr = warp * RPW + r, t = q0 + rr;
            if (t >= a.T || k0 > t) continue;  // warp-uniform
            int j = k0 + lane;
            float s = -INFINITY;
            if (j <= t) {
                float acc = 0.0f;
                for (int d = 0; d < D; d++) acc += sq[rr * D + d] * sk[lane * (D + 1) + d];
                s = acc * scale;
            }
            float mnew = fmaxf(m[r], warp_max(s));
            float pj = j <= t ? expf(s - mnew) : 0.0f;
            float corr = expf(m[r] - mnew);
            l[r] = l[r] * corr + warp_sum(pj);
            m[r] = mnew;
            int jmax = min(TILE, t - k0 + 1);
#pragma unroll
            for (int p = 0; p < DP; p++) o[r][p] *= corr;
            for (int jj = 0; jj < jmax; jj++) {
                float w = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
                for (int p = 0; p < DP; p++) o[r][p] += w * sv[jj * D + p * 32 + lane];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = q0 + warp * RPW + r;
        if (t >= a.T) continue;
        float inv = 1.0f / l[r];
        i64 orow = (rb + t) * (i64)a.H * hd + (i64)h * hd;
#pragma unroll
        for (int p = 0; p < DP; p++)
            if (p * 32 + lane < hd) st(out, dto, orow + p * 32 + lane, o[r][p] * inv);
        if (lane == 0) st(lse, dtl, ((i64)b * a.H + h) * a.T + t, m[r] + logf(l[r]));
    }
}

// delta[b,h,t] = sum_d dout * out (the softmax-backward row correction).
// One warp per (row, head).
extern "C" __global__ void attn_bwd_delta_k(float* delta, const void* dout, int dtdo, const void* out, int dto,
                                            AttnDims a, int D) {
    i64 idx = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (idx >= (i64)a.B * a.T * a.H) return;
    int h = (int)(idx % a.H);
    i64 n = idx / a.H;  // row b*T + t
    i64 base = n * a.H * D + (i64)h * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += ld(dout, dtdo, base + d) * ld(out, dto, base + d);
    s = warp_sum(s);
    int b = (int)(n / a.T), t = (int)(n % a.T);
    if (lane == 0) delta[((i64)b * a.H + h) * a.T + t] = s;
}

// dQ: per query row, loop over key tiles; ds = p (dO.v - delta), dq += ds k.
template <int DP>
__device__ void attn_bwd_dq(void* dqkv, int dtg, const void* dout, int dtdo, const void* qkv, int dtq,
                            const void* lse, int dtl, const float* delta, AttnDims a, int hd) {
    const int D = DP * 32;
    extern __shared__ float smem[];
    float* sq = smem;                 // [TILE][D]
    float* sdo = sq + TILE * D;       // [TILE][D]
    float* sk = sdo + TILE * D;       // [TILE][D+1]
    float* sv = sk + TILE * (D + 1);  // [TILE][D+1]
    int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    int g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * hd, rb = (i64)b * a.T;
    float scale = 1.0f / sqrtf((float)hd);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_tile(sq, D, qkv, dtq, rb, q0, a.T, W, qcol(a, h, hd), D, hd);
    load_tile(sdo, D, dout, dtdo, rb, q0, a.T, (i64)a.H * hd, (i64)h * hd, D, hd);
    float lr[RPW], dr[RPW], dq[RPW][DP];
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = min(q0 + warp * RPW + r, a.T - 1);
        i64 li = ((i64)b * a.H + h) * a.T + t;
        lr[r] = ld(lse, dtl, li);
        dr[r] = delta[li];
#pragma unroll
        for (int p = 0; p < DP; p++) dq[r][p] = 0.0f;
    }
    int kend = min(a.T, q0 + TILE);
    for (int k0 = 0; k0 < kend; k0 += TILE) {
        __syncthreads();
        load_tile(sk, D + 1, qkv, dtq, rb, k0, a.T, W, kcol(a, g, hd), D, hd);
        load_tile(sv, D + 1, qkv, dtq, rb, k0, a.T, W, vcol(a, g, hd), D, hd);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RPW; r++) {
            int rr = warp * RPW + r, t = q0 + rr;
            if (t >= a.T || k0 > t) continue;
            int j = k0 + lane;
            float ds = 0.0f;
            if (j <= t) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    s += sq[rr * D + d] * sk[lane * (D + 1) + d];
                    dp += sdo[rr * D + d] * sv[lane * (D + 1) + d];
                }
                float pj = expf(s * scale - lr[r]);
                ds = pj * (dp - dr[r]);
            }
            int jmax = min(TILE, t - k0 + 1);
            for (int jj = 0; jj < jmax; jj++) {
                float w = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
                for (int p = 0; p < DP; p++) dq[r][p] += w * sk[jj * (D + 1) + p * 32 + lane];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int t = q0 + warp * RPW + r;
        if (t >= a.T) continue;
        i64 row = (rb + t) * W + qcol(a, h, hd);
#pragma unroll
        for (int p = 0; p < DP; p++)
            if (p * 32 + lane < hd) st(dqkv, dtg, row + p * 32 + lane, dq[r][p] * scale);
    }
}

// dK, dV: per key row of one kv head, loop over the query heads of its
// group and the query tiles at or after it (causal). No atomics: each
// (key row, kv head) is owned by exactly one warp, so results are exact
// sums in a fixed order.
template <int DP>
__device__ void attn_bwd_dkv(void* dqkv, int dtg, const void* dout, int dtdo, const void* qkv, int dtq,
                             const void* lse, int dtl, const float* delta, AttnDims a, int hd) {
    const int D = DP * 32;
    extern __shared__ float smem[];
    float* sk = smem;                  // [TILE][D]
    float* sv = sk + TILE * D;         // [TILE][D]
    float* sq = sv + TILE * D;         // [TILE][D+1]
    float* sdo = sq + TILE * (D + 1);  // [TILE][D+1]
    float* sl = sdo + TILE * (D + 1);  // [TILE]
    float* sd = sl + TILE;             // [TILE]
    int k0 = blockIdx.x * TILE, g = blockIdx.y, b = blockIdx.z;
    int group = a.H / a.KV;
    i64 W = (i64)(a.H + 2 * a.KV) * hd, rb = (i64)b * a.T;
    float scale = 1.0f / sqrtf((float)hd);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_tile(sk, D, qkv, dtq, rb, k0, a.T, W, kcol(a, g, hd), D, hd);
    load_tile(sv, D, qkv, dtq, rb, k0, a.T, W, vcol(a, g, hd), D, hd);
    float dk[RPW][DP], dv[RPW][DP];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
        for (int p = 0; p < DP; p++) dk[r][p] = dv[r][p] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int q0 = k0; q0 < a.T; q0 += TILE) {
            __syncthreads();
            load_tile(sq, D + 1, qkv, dtq, rb, q0, a.T, W, qcol(a, h, hd), D, hd);
            load_tile(sdo, D + 1, dout, dtdo, rb, q0, a.T, (i64)a.H * hd, (i64)h * hd, D, hd);
            if (threadIdx.x < TILE) {
                int t = q0 + threadIdx.x;
                i64 li = ((i64)b * a.H + h) * a.T + t;
                sl[threadIdx.x] = t < a.T ? ld(lse, dtl, li) : 0.0f;
                sd[threadIdx.x] = t < a.T ? delta[li] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < RPW; r++) {
                int rr = warp * RPW + r, j = k0 + rr;
                if (j >= a.T) continue;
                int i = q0 + lane;
                float pi = 0.0f, ds = 0.0f;
                if (i < a.T && i >= j) {
                    float s = 0.0f, dp = 0.0f;
                    for (int d = 0; d < D; d++) {
                        s += sq[lane * (D + 1) + d] * sk[rr * D + d];
                        dp += sdo[lane * (D + 1) + d] * sv[rr * D + d];
                    }
                    pi = expf(s * scale - sl[lane]);
                    ds = pi * (dp - sd[lane]);
                }
                int ii0 = max(0, j - q0), ii1 = min(TILE, a.T - q0);
                for (int ii = ii0; ii < ii1; ii++) {
                    float wp = __shfl_sync(0xffffffffu, pi, ii);
                    float wd = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
                    for (int p = 0; p < DP; p++) {
                        dv[r][p] += wp * sdo[ii * (D + 1) + p * 32 + lane];
                        dk[r][p] += wd * sq[ii * (D + 1) + p * 32 + lane];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
        int j = k0 + warp * RPW + r;
        if (j >= a.T) continue;
        i64 row = (rb + j) * W;
#pragma unroll
        for (int p = 0; p < DP; p++) {
            if (p * 32 + lane >= hd) continue;
            st(dqkv, dtg, row + kcol(a, g, hd) + p * 32 + lane, dk[r][p] * scale);
            st(dqkv, dtg, row + vcol(a, g, hd) + p * 32 + lane, dv[r][p]);
        }
    }
}

#define ATTN_INSTANTIATE(DP, NAME)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) attn_fwd_##NAME(void* out, int dto, void* lse, int dtl,       \
                                                                      const void* qkv, int dtq, AttnDims a, int hd) { \
        attn_fwd<DP>(out, dto, lse, dtl, qkv, dtq, a, hd);                                                           \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                                \
        attn_bwd_dq_##NAME(void* dqkv, int dtg, const void* dout, int dtdo, const void* qkv, int dtq,               \
                           const void* lse, int dtl, const float* delta, AttnDims a, int hd) {                       \
        attn_bwd_dq<DP>(dqkv, dtg, dout, dtdo, qkv, dtq, lse, dtl, delta, a, hd);                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                                \
        attn_bwd_dkv_##NAME(void* dqkv, int dtg, const void* dout, int dtdo, const void* qkv, int dtq,              \
                            const void* lse, int dtl, const float* delta, AttnDims a, int hd) {                      \
        attn_bwd_dkv<DP>(dqkv, dtg, dout, dtdo, qkv, dtq, lse, dtl, delta, a, hd);                                   \
    }

ATTN_INSTANTIATE(1, d32)
ATTN_INSTANTIATE(2, d64)
ATTN_INSTANTIATE(3, d96)
ATTN_INSTANTIATE(4, d128)
