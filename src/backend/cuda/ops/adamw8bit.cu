// Blockwise 8-bit AdamW (bitsandbytes semantics). One thread per element,
// one 256-thread block per QUANT_BLOCK (grid-stride over quant blocks):
//   1. dequantize m (signed map) and v (unsigned map) with the block absmax;
//   2. fp32 AdamW in registers (params see the unquantized new m, v) and
//      the bf16 shadow of params when `shadow` is non-null (like adamw.cu);
//   3. new absmax = block max |m|, |v|; each value becomes the code nearest
//      to value/absmax: the count of decision thresholds below it (ties go
//      to the lower code), as quant_map::nearest does on the CPU.
// All arithmetic uses _rn intrinsics in the CPU's operation order: no FMA
// contraction, IEEE division and sqrt, so m, v, the absmax and therefore
// every code are bit-identical to the CPU reference.

// Mirrors kernels::AdamArgs (same layout as in adamw.cu).
struct AdamArgs {
    float lr, b1, b2, eps, wd, grad_scale, step_size, sqrt_bc2;  // step_size = lr / bc1
};

#define QBLOCK 256  // crate::backend::QUANT_BLOCK; blockDim.x must equal it

// `maps` (device, 1024 floats): signed map | unsigned map | signed
// thresholds (255 + pad) | unsigned thresholds (255 + pad).
#define MAP_FLOATS 1024

// First index k in [0, 255] with !(thr[k] < x): Rust's partition_point
// (NaN compares false everywhere -> code 0, as on the CPU).
__device__ __forceinline__ unsigned char nearest_code(const float* thr, float x) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (thr[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return (unsigned char)lo;
}

// Block max of two non-negative values (fmaxf ignores NaN, like f32::max);
// every thread gets both. `tmp`: 64 floats of shared memory.
__device__ __forceinline__ float2 block_max2(float a, float b, float* tmp) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = warp_max(a);
    b = warp_max(b);
    __syncthreads();  // the previous block's readers are done with tmp
    if (lane == 0) {
        tmp[warp] = a;
        tmp[32 + warp] = b;
    }
    __syncthreads();
    int nw = blockDim.x >> 5;
    a = warp_max(lane < nw ? tmp[lane] : 0.0f);
    b = warp_max(lane < nw ? tmp[32 + lane] : 0.0f);
    return make_float2(a, b);
}

// Steps 1-2 for element i of quant block `blk`; returns the new (m, v).
__device__ __forceinline__ float2 adam8_update(float* p, const void* g, int dtg, const unsigned char* mc,
                                               const unsigned char* vc, float ma, float va, __nv_bfloat16* shadow,
                                               const float* smap, const float* umap, i64 i, const AdamArgs& a,
                                               float decay) {
    float gi = __fmul_rn(ld(g, dtg, i), a.grad_scale);
    float m = __fadd_rn(__fmul_rn(a.b1, __fmul_rn(smap[mc[i]], ma)), __fmul_rn(__fsub_rn(1.0f, a.b1), gi));
    float v = __fadd_rn(__fmul_rn(a.b2, __fmul_rn(umap[vc[i]], va)),
                        __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.b2), gi), gi));
    float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.sqrt_bc2), a.eps);
    float pi = __fsub_rn(__fmul_rn(p[i], decay), __fdiv_rn(__fmul_rn(a.step_size, m), den));
    p[i] = pi;
    if (shadow) shadow[i] = __float2bfloat16_rn(pi);
    return make_float2(m, v);
}

__device__ __forceinline__ float inverse_or_zero(float amax) {
    return amax > 0.0f ? __fdiv_rn(1.0f, amax) : 0.0f;
}

extern "C" __global__ void __launch_bounds__(QBLOCK)
adamw8bit_k(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc, float* mabs, float* vabs,
            __nv_bfloat16* shadow, const float* maps, i64 n, AdamArgs a, float decay) {
    __shared__ float smap[256], umap[256], sthr[256], uthr[256], tmp[64];
    for (int k = threadIdx.x; k < 256; k += blockDim.x) {
        smap[k] = maps[k];
        umap[k] = maps[256 + k];
        sthr[k] = maps[512 + k];
        uthr[k] = maps[768 + k];
    }
    __syncthreads();
    i64 blocks = (n + QBLOCK - 1) / QBLOCK;
    for (i64 blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
        i64 i = blk * QBLOCK + threadIdx.x;
        bool live = i < n;  // the last block may be partial
        float2 mv = make_float2(0.0f, 0.0f);
        if (live) mv = adam8_update(p, g, dtg, mc, vc, mabs[blk], vabs[blk], shadow, smap, umap, i, a, decay);
        // block_max2 synchronizes: every thread has read the old absmax
        // before thread 0 overwrites it below.
        float2 amax = block_max2(fabsf(mv.x), fabsf(mv.y), tmp);
        if (live) {
            mc[i] = nearest_code(sthr, __fmul_rn(mv.x, inverse_or_zero(amax.x)));
            vc[i] = nearest_code(uthr, __fmul_rn(mv.y, inverse_or_zero(amax.y)));
        }
        if (threadIdx.x == 0) {
            mabs[blk] = amax.x;
            vabs[blk] = amax.y;
        }
    }
}
