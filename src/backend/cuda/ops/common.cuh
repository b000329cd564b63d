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

// A row of c bf16 values into a lane's registers for the warp-per-row norm
// kernels: x[t][k] holds column (t*32 + lane)*8 + k (chunks past c are left
// untouched: callers skip them with the same `j < c` test).
template <int MAXV>
__device__ __forceinline__ void load_row_bf16x8(const __nv_bfloat16* row, int c, float (&x)[MAXV][8]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MAXV; t++) {
        const int j = (t * 32 + lane) * 8;
        if (j < c) load_bf16x8(row + j, x[t]);
    }
}

// Backward of a warp-per-row norm over bf16 activations for the warp's
// `rows` rows from `row0`: LayerNorm when CENTER (xhat = (x - mean)·rstd),
// RMSNorm otherwise (xhat = x·rstd). With dn = dout·w:
//   dinp += rstd·(dn - mean(dn)·[CENTER] - xhat·mean(dn·xhat)),
// and per column aw += dout·xhat (the weight gradient), ab += dout (the
// bias gradient, CENTER only).
template <int MAXV, bool CENTER>
__device__ __forceinline__ void norm_bwd_rows(__nv_bfloat16* dinp, const __nv_bfloat16* dout,
                                              const __nv_bfloat16* inp, const float* w, const float* mean,
                                              const float* rstd, i64 row0, int rows, i64 n, int c,
                                              float (&aw)[MAXV][8], float (&ab)[MAXV][8]) {
    const int lane = threadIdx.x & 31;
    for (int rr = 0; rr < rows; rr++) {
        const i64 row = row0 + rr;
        if (row >= n) break;  // warp-uniform
        const i64 base = row * c;
        const float mu = CENTER ? mean[row] : 0.0f, rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int t = 0; t < MAXV; t++) {
            const int j = (t * 32 + lane) * 8;
            if (j >= c) continue;
            float g[8], x[8];
            load_bf16x8(dout + base + j, g);
            load_bf16x8(inp + base + j, x);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float dn = g[k] * w[j + k];
                s1 += dn;
                s2 += dn * (x[k] - mu) * rs;
            }
        }
        s1 = CENTER ? warp_sum(s1) / c : 0.0f;
        s2 = warp_sum(s2) / c;
#pragma unroll
        for (int t = 0; t < MAXV; t++) {
            const int j = (t * 32 + lane) * 8;
            if (j >= c) continue;
            float g[8], x[8], d[8];
            load_bf16x8(dout + base + j, g);
            load_bf16x8(inp + base + j, x);
            load_bf16x8(dinp + base + j, d);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float xh = (x[k] - mu) * rs;
                d[k] += rs * (g[k] * w[j + k] - s1 - xh * s2);
                aw[t][k] += g[k] * xh;
                if (CENTER) ab[t][k] += g[k];
            }
            store_bf16x8(dinp + base + j, d);
        }
    }
}

// Column sums of a block's rows for the warp-per-row norm kernels: each
// lane holds acc[t][k] for columns (t*32 + lane)*8 + k; the warps add theirs
// into red[0..c) one after another (a fixed order: deterministic), then the
// block writes red to out[0..c). Every thread of the block must call it.
template <int MAXV>
__device__ void warps_colsum(float* red, const float (&acc)[MAXV][8], int c, float* out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int i = threadIdx.x; i < c; i += blockDim.x) red[i] = 0.0f;
    for (int wv = 0; wv < warps; wv++) {
        __syncthreads();
        if (warp != wv) continue;
#pragma unroll
        for (int t = 0; t < MAXV; t++) {
            const int j = (t * 32 + lane) * 8;
            if (j >= c) continue;
#pragma unroll
            for (int k = 0; k < 8; k++) red[j + k] += acc[t][k];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < c; i += blockDim.x) out[i] = red[i];
}

// torch.sign semantics: sign(0) = 0 (and NaN -> 0, like the CPU reference).
__device__ __forceinline__ float sign_of(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}
