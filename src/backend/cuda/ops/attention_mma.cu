// Tensor-core causal attention forward (bf16 wmma 16x16x16, fp32
// accumulate), same contract as attn_fwd_* in attention.cu. Needs bf16 qkv
// with 16-byte aligned rows; the host falls back to attention.cu otherwise.
//
// A block owns 64 query rows of one head, 4 warps x 16 rows. Per 64-key
// tile: S = Q Kᵀ (wmma, fp32) -> shared; online softmax per row in fp32
// (two lanes per row), P rounded to bf16 -> shared; T = P V (wmma) ->
// shared; O = O * corr + T kept in fp32 shared memory. No S x S matrix.
#include <mma.h>
using namespace nvcuda;

#define BQ 64
#define BK 64
#define NWARP 4

struct AttnDims {
    int B, T, H, KV;
};

// Copy 64 rows of one head (D bf16 each) into smem with row stride ld;
// rows >= T are zero. 16-byte vector loads (host checked alignment).
template <int D>
__device__ __forceinline__ void load_rows(__nv_bfloat16* dst, int ld_, const __nv_bfloat16* src, i64 row_base,
                                          int r0, int T, i64 width, i64 col) {
    const int V = D / 8;  // uint4 per row
    for (int idx = threadIdx.x; idx < 64 * V; idx += blockDim.x) {
        int r = idx / V, c = idx % V;
        int t = r0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t < T) v = *reinterpret_cast<const uint4*>(src + (row_base + t) * width + col + c * 8);
        *reinterpret_cast<uint4*>(dst + r * ld_ + c * 8) = v;
    }
}

template <int D>
__device__ void attn_fwd_mma(void* out, int dto, void* lse, int dtl, const __nv_bfloat16* qkv, AttnDims a) {
    const int LDQ = D + 8;                            // bf16 row stride of Q, K, V tiles
    const int LDX = (D > BK ? D : BK) + 4;           // fp32 row stride of S / T / O
    const int LDP = BK + 8;                           // bf16 row stride of P
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
    __nv_bfloat16* sK = sQ + BQ * LDQ;
    __nv_bfloat16* sV = sK + BK * LDQ;
    float* sX = reinterpret_cast<float*>(sV + BK * LDQ);  // S, then T (per warp 16 rows)
    float* sO = sX + BQ * LDX;
    __nv_bfloat16* sP = reinterpret_cast<__nv_bfloat16*>(sO + BQ * LDX);
    float* sC = reinterpret_cast<float*>(sP + BQ * LDP);  // per-row rescale factor
    int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
    int g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T;
    float scale = 1.0f / sqrtf((float)D);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    load_rows<D>(sQ, LDQ, qkv, rb, q0, a.T, W, (i64)h * D);
    for (int i = threadIdx.x; i < BQ * LDX; i += blockDim.x) sO[i] = 0.0f;
    int wr0 = warp * 16;             // this warp's first row in the tile
    int r = lane >> 1, half = lane & 1;  // softmax: two lanes per row
    int t = q0 + wr0 + r;
    float m = -INFINITY, l = 0.0f;
    float* xw = sX + wr0 * LDX;
    float* ow = sO + wr0 * LDX;
    __nv_bfloat16* pw = sP + wr0 * LDP;
    int kend = min(a.T, q0 + BQ);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        load_rows<D>(sK, LDQ, qkv, rb, k0, a.T, W, (i64)(a.H + g) * D);
        load_rows<D>(sV, LDQ, qkv, rb, k0, a.T, W, (i64)(a.H + a.KV + g) * D);
        __syncthreads();
        // S = Q Kᵀ for this warp's 16 rows x 64 keys.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fk;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fv;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
#pragma unroll
        for (int n = 0; n < BK / 16; n++) {
            wmma::fill_fragment(fc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D; kk += 16) {
                wmma::load_matrix_sync(fa, sQ + wr0 * LDQ + kk, LDQ);
                wmma::load_matrix_sync(fk, sK + n * 16 * LDQ + kk, LDQ);
                wmma::mma_sync(fc, fa, fk, fc);
            }
            wmma::store_matrix_sync(xw + n * 16, fc, LDX, wmma::mem_row_major);
        }
        __syncwarp();
        // Online softmax over this tile, fp32; P -> bf16.
        float* srow = xw + r * LDX;
        float mx = -INFINITY;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            int j = k0 + c;
            float s = (j <= t && j < a.T) ? srow[c] * scale : -INFINITY;
            srow[c] = s;
            mx = fmaxf(mx, s);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float mnew = fmaxf(m, mx);
        float corr = (mnew == -INFINITY) ? 1.0f : expf(m - mnew);
        float sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            float s = srow[c];
            float p = (s == -INFINITY) ? 0.0f : expf(s - mnew);
            pw[r * LDP + c] = __float2bfloat16_rn(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * corr + sum;
        m = mnew;
        if (half == 0) sC[wr0 + r] = corr;
        __syncwarp();
        // T = P V (reuses the S area), then O = O * corr + T.
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            wmma::fill_fragment(fc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                wmma::load_matrix_sync(fa, pw + kk, LDP);
                wmma::load_matrix_sync(fv, sV + kk * LDQ + n * 16, LDQ);
                wmma::mma_sync(fc, fa, fv, fc);
            }
            wmma::store_matrix_sync(xw + n * 16, fc, LDX, wmma::mem_row_major);
        }
        __syncwarp();
        for (int i = lane; i < 16 * D; i += 32) {
            int rr = i / D, c = i % D;
            ow[rr * LDX + c] = ow[rr * LDX + c] * sC[wr0 + rr] + xw[rr * LDX + c];
        }
        __syncwarp();
    }
    // Normalize and write; lse = m + log(l) (natural log, scaled scores).
    if (half == 0) sC[wr0 + r] = 1.0f / l;
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
        int rr = i / D, c = i % D;
        int tt = q0 + wr0 + rr;
        if (tt < a.T) st(out, dto, (rb + tt) * (i64)a.H * D + (i64)h * D + c, ow[rr * LDX + c] * sC[wr0 + rr]);
    }
    if (half == 0 && t < a.T) st(lse, dtl, ((i64)b * a.H + h) * a.T + t, m + logf(l));
}

#define MMA_INSTANTIATE(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                                               \
        attn_fwd_mma_d##D(void* out, int dto, void* lse, int dtl, const __nv_bfloat16* qkv, AttnDims a) {          \
        attn_fwd_mma<D>(out, dto, lse, dtl, qkv, a);                                                                \
    }

MMA_INSTANTIATE(32)
MMA_INSTANTIATE(64)
MMA_INSTANTIATE(96)
MMA_INSTANTIATE(128)
