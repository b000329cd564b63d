// Shared helpers, prepended (as text) to every kernel file before NVRTC
// compiles it, so no include path is needed for our own code.
#include <cuda_bf16.h>

typedef long long i64;

// NVRTC has no <math.h> macros.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
typedef unsigned long long u64;

// Element type codes; must match `dt_code` in kernels.rs.
#define DT_F32 0
#define DT_BF16 1
#define DT_U32 2
#define DT_U8 3

// Every kernel takes (pointer, dtype) pairs so one kernel serves fp32 and
// bf16 buffers; the branch is uniform across the grid, so it costs ~nothing.
__device__ __forceinline__ float ld(const void* p, int dt, i64 i) {
    if (dt == DT_BF16) return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    if (dt == DT_U32) return (float)((const unsigned*)p)[i];
    if (dt == DT_U8) return (float)((const unsigned char*)p)[i];
    return ((const float*)p)[i];
}

// bf16 stores round to nearest even, like the host conversion.
__device__ __forceinline__ void st(void* p, int dt, i64 i, float v) {
    if (dt == DT_BF16) ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v);
    else ((float*)p)[i] = v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
// gets the result. `tmp` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* tmp) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) tmp[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    float r = lane < nw ? tmp[lane] : 0.0f;
    return warp_sum(r);
}

// fp64 sums for reductions that must not lose digits (norms).
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

// Grid-stride loop over [0, n) with 64-bit indices (buffers can exceed 2^31).
#define GRID_LOOP(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// 4 fp32 -> 4 bf16 packed in 8 bytes: the vectorized bf16 weight-shadow
// store of the optimizer kernels.
__device__ __forceinline__ uint2 pack_bf16x4(float4 v) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 packed;
    packed.x = *reinterpret_cast<unsigned*>(&lo);
    packed.y = *reinterpret_cast<unsigned*>(&hi);
    return packed;
}

// 8 bf16 <-> 8 floats through one 16-byte load / store (p 16-byte aligned).
__device__ __forceinline__ void load_bf16x8(const __nv_bfloat16* p, float* f) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 v = __bfloat1622float2(h[k]);
        f[2 * k] = v.x;
        f[2 * k + 1] = v.y;
    }
}

__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float* f) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = u;
}

// ---- Block-per-row norm kernels (RMSNorm, LayerNorm; bf16 rows) --------
// Thread t of a block owns columns 8t .. 8t+7 of every row (one 16-byte
// chunk), so the weight's 8 values and the weight-gradient column sums stay
// in that thread's registers across all the rows the block walks; a row's
// sums go through block_sums. Needs c % 8 == 0, c <= 8 * 512 and 16-byte
// aligned rows (the host checks); blockDim is c/8 rounded up to a warp, and
// threads past c/8 hold zeros. Each block keeps a few rows' loads in flight
// (the next row is fetched before this one is reduced), and many blocks
// share an SM, which is what keeps DRAM busy: the warp-per-row kernels these
// replace held a whole row per warp (one block of 8 warps per SM at c = 2048)
// and re-read rows and weights through L1, at 1/3 of the DRAM bandwidth.

// 16 bytes of row `row` at column j (zeros where !ok).
__device__ __forceinline__ uint4 ld_chunk(const __nv_bfloat16* x, i64 row, int c, int j, bool ok) {
    return ok ? *reinterpret_cast<const uint4*>(x + row * c + j) : make_uint4(0u, 0u, 0u, 0u);
}

__device__ __forceinline__ void unpack_bf16x8(uint4 u, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 v = __bfloat1622float2(h[k]);
        f[2 * k] = v.x;
        f[2 * k + 1] = v.y;
    }
}

// 8 fp32 values at w[j..j+8) (zeros where !ok). Scalar loads: a weight
// view need not be 16-byte aligned, and each block loads it once.
__device__ __forceinline__ void load_f32x8(const float* w, int j, bool ok, float* f) {
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] = ok ? w[j + k] : 0.0f;
}

// Walks rows blockIdx.x, + gridDim.x, ... (the block-per-row forwards),
// with the next row's chunk of a (and of b, when TWO) in flight while
// f(row, chunk of a, chunk of b) works on this one.
template <bool TWO, class F>
__device__ __forceinline__ void walk_rows(const __nv_bfloat16* a, const __nv_bfloat16* b, i64 n, int c, int j,
                                          bool ok, F f) {
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    i64 row = blockIdx.x;
    uint4 na = row < n ? ld_chunk(a, row, c, j, ok) : zero, nb = TWO && row < n ? ld_chunk(b, row, c, j, ok) : zero;
    for (; row < n; row += gridDim.x) {
        const uint4 ca = na, cb = nb;
        if (row + gridDim.x < n) {
            na = ld_chunk(a, row + gridDim.x, c, j, ok);
            if (TWO) nb = ld_chunk(b, row + gridDim.x, c, j, ok);
        }
        f(row, ca, cb);
    }
}

// The residual add of the fused add + norm forwards: x = a + b rounded to
// bf16 (exactly what the separate add kernel stores and the norm would read
// back), stored into sum.
__device__ __forceinline__ void add_rounded(float* x, uint4 ca, uint4 cb, __nv_bfloat16* sum, i64 row, int c, int j,
                                            bool ok) {
    float y[8];
    unpack_bf16x8(ca, x);
    unpack_bf16x8(cb, y);
#pragma unroll
    for (int k = 0; k < 8; k++) x[k] = __bfloat162float(__float2bfloat16_rn(x[k] + y[k]));
    if (ok) store_bf16x8(sum + row * c + j, x);
}

// Sums v[0..NV) over the block; every thread gets the totals. Warps add in
// a fixed order (reproducible). `red` holds 2 * NV * 32 floats used in turn
// (`phase`), so one barrier per call is enough: a buffer is written again
// two calls later, after every thread passed the barrier of the call in
// between, i.e. after it read these totals.
template <int NV>
__device__ __forceinline__ void block_sums(float* v, float* red, int& phase) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float* buf = red + (phase & 1) * NV * 32;
    phase++;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const float s = warp_sum(v[k]);
        if (lane == 0) buf[k * 32 + warp] = s;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < NV; k++) {
        float s = 0.0f;
        for (int i = 0; i < nw; i++) s += buf[k * 32 + i];
        v[k] = s;
    }
}

// Backward of a norm over the rows [blockIdx.x * rpb, +rpb): LayerNorm when
// CENTER (xhat = (x - mean)·rstd), RMSNorm otherwise (xhat = x·rstd). With
// dn = dout·w:
//   dinp += rstd·(dn - mean(dn)·[CENTER] - xhat·mean(dn·xhat)),
// and the block's column sums of dout·xhat (the weight gradient) into
// pw[blockIdx.x * c ..], of dout (the bias gradient, CENTER only) into pb.
template <bool CENTER>
__device__ __forceinline__ void norm_bwd_cols(__nv_bfloat16* dinp, const __nv_bfloat16* dout,
                                              const __nv_bfloat16* inp, const float* w, const float* mean,
                                              const float* rstd, float* pw, float* pb, i64 n, int c, int rpb) {
    constexpr int NV = CENTER ? 2 : 1;
    __shared__ float red[2 * NV * 32];
    const int j = threadIdx.x * 8;
    const bool ok = j < c;
    float wv[8], aw[8], ab[8];
    load_f32x8(w, j, ok, wv);
#pragma unroll
    for (int k = 0; k < 8; k++) aw[k] = ab[k] = 0.0f;
    const i64 r0 = (i64)blockIdx.x * rpb, r1 = min(n, r0 + rpb);
    int phase = 0;
    uint4 gn = make_uint4(0u, 0u, 0u, 0u), xn = gn, dn4 = gn;
    float mun = 0.0f, rsn = 0.0f;
    if (r0 < r1) {
        gn = ld_chunk(dout, r0, c, j, ok), xn = ld_chunk(inp, r0, c, j, ok), dn4 = ld_chunk(dinp, r0, c, j, ok);
        mun = CENTER ? mean[r0] : 0.0f, rsn = rstd[r0];
    }
    for (i64 row = r0; row < r1; row++) {
        const uint4 gu = gn, xu = xn, du = dn4;
        const float mu = mun, rs = rsn;
        if (row + 1 < r1) {  // the next row's loads fly while this one is reduced
            gn = ld_chunk(dout, row + 1, c, j, ok), xn = ld_chunk(inp, row + 1, c, j, ok), dn4 = ld_chunk(dinp, row + 1, c, j, ok);
            mun = CENTER ? mean[row + 1] : 0.0f, rsn = rstd[row + 1];
        }
        float g[8], x[8], d[8], s[NV];
        unpack_bf16x8(gu, g);
        unpack_bf16x8(xu, x);
#pragma unroll
        for (int k = 0; k < NV; k++) s[k] = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float dn = g[k] * wv[k];
            if (CENTER) s[0] += dn;
            s[NV - 1] += dn * (x[k] - mu) * rs;
        }
        block_sums<NV>(s, red, phase);
        const float s1 = CENTER ? s[0] / c : 0.0f, s2 = s[NV - 1] / c;
        if (!ok) continue;
        unpack_bf16x8(du, d);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float xh = (x[k] - mu) * rs;
            d[k] += rs * (g[k] * wv[k] - s1 - xh * s2);
            aw[k] += g[k] * xh;
            if (CENTER) ab[k] += g[k];
        }
        store_bf16x8(dinp + row * c + j, d);
    }
    if (!ok) return;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        pw[(i64)blockIdx.x * c + j + k] = aw[k];
        if (CENTER) pb[(i64)blockIdx.x * c + j + k] = ab[k];
    }
}

// torch.sign semantics: sign(0) = 0 (and NaN -> 0, like the CPU reference).
__device__ __forceinline__ float sign_of(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}
