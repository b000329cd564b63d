// Blockwise 8-bit AdamW (bitsandbytes semantics). One WARP per QUANT_BLOCK
// of 256 elements (8 per lane), 8 warps per thread block, grid-stride over
// quant blocks:
//   1. dequantize m (signed map) and v (unsigned map) with the block absmax;
//   2. fp32 AdamW in registers (params see the unquantized new m, v) and
//      the bf16 shadow of params when `shadow` is non-null (like adamw.cu);
//   3. new absmax = block max |m|, |v| (a warp reduction: no block barrier);
//      each value becomes the code nearest to value/absmax: the count of
//      decision thresholds below it (ties go to the lower code), as
//      quant_map::nearest does on the CPU.
// All arithmetic uses _rn intrinsics in the CPU's operation order: no FMA
// contraction, IEEE division and sqrt, so m, v, the absmax and therefore
// every code are bit-identical to the CPU reference.
//
// Why this layout (the previous kernel, one thread per element and one
// 256-thread block per quant block, reached 0.23 of copy bandwidth): it did
// two __syncthreads and a shared-memory reduction per 256 elements, two IEEE
// divisions per element for the block's 1/absmax, byte-wide loads and
// stores, and two 8-step binary searches with dependent shared-memory loads
// per element. Here a lane moves its 8 elements with 16-byte (params,
// grads, shadow) and 4-byte (codes) accesses when the views are aligned, the
// absmax is a warp shuffle reduction, 1/absmax is computed once per lane, and
// the code search starts at the dynamic map's nearest code computed from
// the value (decade and linear position, approximate math) and scans at
// most a step or two to the exact partition point. The scan, not the
// guess, decides the code, so the guess only affects speed.

// Mirrors kernels::AdamArgs (same layout as in adamw.cu).
struct AdamArgs {
    float lr, b1, b2, eps, wd, grad_scale, step_size, sqrt_bc2;  // step_size = lr / bc1
};

#define QBLOCK 256      // crate::backend::QUANT_BLOCK
#define WARPS 8         // warps (quant blocks in flight) per thread block; blockDim.x = 32 * WARPS
#define PER_LANE 8      // QBLOCK / 32: two groups of 4 consecutive elements per lane

// `maps` (device, 1024 floats): signed map | unsigned map | signed
// thresholds (255 + pad) | unsigned thresholds (255 + pad).
#define MAP_FLOATS 1024

// First index k in [0, 255] with !(thr[k] < x): Rust's partition_point
// (NaN compares false everywhere -> code 0, as on the CPU), found by
// scanning from `k`: every threshold below the final k is < x and thr[k]
// is not, so the result is exact for any starting k in [0, 255].
__device__ __forceinline__ unsigned char scan_code(const float* thr, float x, int k) {
    if (!(x == x)) return 0;
    while (k > 0 && !(thr[k - 1] < x)) k--;
    while (k < 255 && thr[k] < x) k++;
    return (unsigned char)k;
}

// Index of the code nearest to x in bitsandbytes' dynamic map
// (optim/quant_map.rs): decade i in 0..7 holds n_i codes
// 10^(i-6)·(0.1 + (k + 0.5)·0.9/n_i), n_i = 2^i (signed, mirrored) or
// 2^(i+1) (unsigned); sorted, the signed map is [negatives, 0, positives,
// 1.0], the unsigned [0, decades, 1.0]. Approximate math: only a start for
// scan_code (checked off-line against partition_point: never more than
// one step away on finite values).
__device__ __forceinline__ int dynamic_map_guess(float x, bool is_signed) {
    float ax = fabsf(x);
    float decade = fminf(fmaxf(floorf(__log10f(fmaxf(ax, 1e-8f))) + 7.0f, 0.0f), 6.0f);
    int i = (int)decade;
    float n = (float)(is_signed ? (1 << i) : (2 << i));
    float scale = __powf(10.0f, decade - 6.0f);
    float kf = rintf((__fdividef(ax, scale) - 0.1f) * n * (1.0f / 0.9f) - 0.5f);
    int k = (int)fminf(fmaxf(kf, 0.0f), n - 1.0f);
    if (!is_signed) return (2 << i) - 1 + k;
    int pos = (1 << i) - 1 + k;
    return x >= 0.0f ? 128 + pos : 126 - pos;
}

__device__ __forceinline__ unsigned char signed_code(const float* thr, float x) {
    return scan_code(thr, x, dynamic_map_guess(x, true));
}

__device__ __forceinline__ unsigned char unsigned_code(const float* thr, float x) {
    return scan_code(thr, x, dynamic_map_guess(x, false));
}

__device__ __forceinline__ float inverse_or_zero(float amax) {
    return amax > 0.0f ? __fdiv_rn(1.0f, amax) : 0.0f;
}

// Steps 1-2 for one element: updates p in place, returns the new m and v.
__device__ __forceinline__ void adam8_element(float& p, float g, unsigned char mc, unsigned char vc, float ma, float va,
                                              const float* smap, const float* umap, const AdamArgs& a, float decay,
                                              float& m, float& v) {
    float gi = __fmul_rn(g, a.grad_scale);
    m = __fadd_rn(__fmul_rn(a.b1, __fmul_rn(smap[mc], ma)), __fmul_rn(__fsub_rn(1.0f, a.b1), gi));
    v = __fadd_rn(__fmul_rn(a.b2, __fmul_rn(umap[vc], va)), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.b2), gi), gi));
    float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.sqrt_bc2), a.eps);
    p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(a.step_size, m), den));
}

// A lane's element of slot s (0..7) in the quant block starting at `base`:
// two groups of 4 consecutive elements, 128 apart, so each warp-wide access
// of a group is one contiguous span.
__device__ __forceinline__ i64 slot_index(i64 base, int lane, int s) {
    return base + (s >> 2) * 128 + lane * 4 + (s & 3);
}

// Loads, update and stores of a full quant block with aligned views:
// float4 params/grads (8-byte bf16 grads), 4-byte code words, 8-byte
// shadow words. Leaves the old codes' new m, v in the arrays.
__device__ __forceinline__ void update_vectorized(float* p, const void* g, int dtg, const unsigned char* mc,
                                                  const unsigned char* vc, __nv_bfloat16* shadow, i64 base, int lane,
                                                  float ma, float va, const float* smap, const float* umap,
                                                  const AdamArgs& a, float decay, float* m, float* v) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        i64 e = slot_index(base, lane, 4 * h);
        float4 pv = *(const float4*)(p + e);
        float gv[4];
        if (dtg == DT_BF16) {
            uint2 raw = *(const uint2*)((const __nv_bfloat16*)g + e);
            __nv_bfloat162 lo = *(__nv_bfloat162*)&raw.x, hi = *(__nv_bfloat162*)&raw.y;
            gv[0] = __low2float(lo), gv[1] = __high2float(lo), gv[2] = __low2float(hi), gv[3] = __high2float(hi);
        } else {
            float4 f = *(const float4*)((const float*)g + e);
            gv[0] = f.x, gv[1] = f.y, gv[2] = f.z, gv[3] = f.w;
        }
        uchar4 mq = *(const uchar4*)(mc + e), vq = *(const uchar4*)(vc + e);
        float pa[4] = {pv.x, pv.y, pv.z, pv.w};
        unsigned char mqa[4] = {mq.x, mq.y, mq.z, mq.w}, vqa[4] = {vq.x, vq.y, vq.z, vq.w};
#pragma unroll
        for (int t = 0; t < 4; t++)
            adam8_element(pa[t], gv[t], mqa[t], vqa[t], ma, va, smap, umap, a, decay, m[4 * h + t], v[4 * h + t]);
        *(float4*)(p + e) = make_float4(pa[0], pa[1], pa[2], pa[3]);
        if (shadow) {
            __nv_bfloat162 lo = __floats2bfloat162_rn(pa[0], pa[1]), hi = __floats2bfloat162_rn(pa[2], pa[3]);
            uint2 w;
            w.x = *(unsigned*)&lo;
            w.y = *(unsigned*)&hi;
            *(uint2*)(shadow + e) = w;
        }
    }
}

// The same element by element, for misaligned views and the partial last
// block (elements past n keep m = v = 0, which leaves the absmax as is).
__device__ __forceinline__ void update_scalar(float* p, const void* g, int dtg, const unsigned char* mc,
                                              const unsigned char* vc, __nv_bfloat16* shadow, i64 base, int lane,
                                              i64 n, float ma, float va, const float* smap, const float* umap,
                                              const AdamArgs& a, float decay, float* m, float* v) {
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        i64 e = slot_index(base, lane, s);
        m[s] = v[s] = 0.0f;
        if (e >= n) continue;
        float pe = p[e];
        adam8_element(pe, ld(g, dtg, e), mc[e], vc[e], ma, va, smap, umap, a, decay, m[s], v[s]);
        p[e] = pe;
        if (shadow) shadow[e] = __float2bfloat16_rn(pe);
    }
}

// Step 3's stores: codes of the new m, v against the new absmax.
__device__ __forceinline__ void store_codes(unsigned char* mc, unsigned char* vc, i64 base, int lane, i64 n, bool vec,
                                            const float* m, const float* v, float inv_m, float inv_v, const float* sthr,
                                            const float* uthr) {
    unsigned char cm[PER_LANE], cv[PER_LANE];
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        cm[s] = signed_code(sthr, __fmul_rn(m[s], inv_m));
        cv[s] = unsigned_code(uthr, __fmul_rn(v[s], inv_v));
    }
    if (vec) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            i64 e = slot_index(base, lane, 4 * h);
            *(uchar4*)(mc + e) = make_uchar4(cm[4 * h], cm[4 * h + 1], cm[4 * h + 2], cm[4 * h + 3]);
            *(uchar4*)(vc + e) = make_uchar4(cv[4 * h], cv[4 * h + 1], cv[4 * h + 2], cv[4 * h + 3]);
        }
        return;
    }
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        i64 e = slot_index(base, lane, s);
        if (e < n) {
            mc[e] = cm[s];
            vc[e] = cv[s];
        }
    }
}

// `aligned`: the launcher checked p, g, the code views and the shadow for
// the vector widths above (a uniform branch); full blocks then take the
// vector path, the partial last block the scalar one.
extern "C" __global__ void __launch_bounds__(32 * WARPS)
adamw8bit_k(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc, float* mabs, float* vabs,
            __nv_bfloat16* shadow, const float* maps, i64 n, AdamArgs a, float decay, int aligned) {
    __shared__ float smap[256], umap[256], sthr[256], uthr[256];
    for (int k = threadIdx.x; k < 256; k += blockDim.x) {
        smap[k] = maps[k];
        umap[k] = maps[256 + k];
        sthr[k] = maps[512 + k];
        uthr[k] = maps[768 + k];
    }
    __syncthreads();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i64 blocks = (n + QBLOCK - 1) / QBLOCK;
    for (i64 blk = (i64)blockIdx.x * WARPS + warp; blk < blocks; blk += (i64)gridDim.x * WARPS) {
        i64 base = blk * QBLOCK;
        bool vec = aligned && base + QBLOCK <= n;
        // Every lane reads the old absmax before the reduction below, whose
        // shuffles order those reads before lane 0 overwrites it.
        float ma = mabs[blk], va = vabs[blk];
        float m[PER_LANE], v[PER_LANE];
        if (vec) update_vectorized(p, g, dtg, mc, vc, shadow, base, lane, ma, va, smap, umap, a, decay, m, v);
        else update_scalar(p, g, dtg, mc, vc, shadow, base, lane, n, ma, va, smap, umap, a, decay, m, v);
        // Block max of |m|, |v| from 0 (fmaxf ignores NaN, like f32::max):
        // the maximum of the same values as before, in any order.
        float am = 0.0f, av = 0.0f;
#pragma unroll
        for (int s = 0; s < PER_LANE; s++) {
            am = fmaxf(am, fabsf(m[s]));
            av = fmaxf(av, fabsf(v[s]));
        }
        am = warp_max(am);
        av = warp_max(av);
        store_codes(mc, vc, base, lane, n, vec, m, v, inverse_or_zero(am), inverse_or_zero(av), sthr, uthr);
        if (lane == 0) {
            mabs[blk] = am;
            vabs[blk] = av;
        }
    }
}
