// Blockwise 8-bit AdamW (bitsandbytes semantics) over one tensor or over
// many tensors ("segments") in one launch. One WARP per QUANT_BLOCK of 256
// elements (8 per lane), 8 warps per thread block, a persistent grid that
// strides over every quant block of every segment:
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
// What bounds it, and the answers here (the previous kernel: 0.425 of copy
// bandwidth on llama-1b, 170 launches a step):
// - memory parallelism: a lane loads all of its 8 elements (two 16-byte
//   param and gradient loads, two 4-byte code words per moment) before any
//   arithmetic, and with PREFETCH also the NEXT quant block's while it
//   computes this one, so every warp always has a block's loads in flight;
// - the code search: one shared-memory table read and one compare per
//   value (optim/quant_bins.rs: 1/128-octave bins holding at most one
//   threshold each), no data-dependent loop, no transcendental guess;
// - launches: every 8-bit tensor of a model in one launch (a segment
//   table), on a grid of exactly the resident thread blocks.

// Mirrors kernels::AdamArgs (same layout as in adamw.cu).
struct AdamArgs {
    float lr, b1, b2, eps, wd, grad_scale, step_size, sqrt_bc2;  // step_size = lr / bc1
};

// Mirrors Adam8Seg in adamw8bit.rs: one tensor of a launch. A table ends
// with a sentinel whose block_off is the launch's quant block count.
struct Adam8Seg {
    i64 param_off;  // its first element in p, g (and the shadow)
    i64 code_off;   // its first code in mc, vc
    i64 block_off;  // its first quant block: index into mabs, vabs
    i64 len;        // elements
    float wd;       // weight decay: decay = 1 - lr * wd, in f32 like the CPU
    int aligned;    // p, g, shadow and the codes allow the vector path here
};

#define QBLOCK 256      // crate::backend::QUANT_BLOCK
#define WARPS 8         // warps (quant blocks in flight) per thread block; blockDim.x = 32 * WARPS
#define PER_LANE 8      // QBLOCK / 32: two groups of 4 consecutive elements per lane

// `maps` (device): signed map | unsigned map | signed thresholds (255,
// +inf) | unsigned thresholds (255, +inf), 256 floats each; then the bin
// starts (quant_bins::starts) of the signed and of the unsigned map,
// 2 * BINS bytes each; padded to whole 16-byte words.
#define BINS 3073            // optim::quant_bins::BINS
#define BIN_LO (104 << 7)    // optim::quant_bins::BIN_LO
#define TABLE_WORDS ((4 * 1024 + 4 * BINS + 15) / 16)

// The code of x: thresholds below x (quant_bins::nearest). thr[255] is
// +inf, so a start of 255 stays 255; NaN compares false: code 0.
__device__ __forceinline__ unsigned nearest_code(const unsigned char* start, const float* thr, float x) {
    unsigned bits = __float_as_uint(x);
    int bin = min(max((int)((bits & 0x7fffffffu) >> 16) - BIN_LO, 0), BINS - 1);
    unsigned k = start[(bits >> 31) * BINS + bin];
    k += thr[k] < x ? 1u : 0u;
    return x == x ? k : 0u;
}

__device__ __forceinline__ float inverse_or_zero(float amax) {
    return amax > 0.0f ? __fdiv_rn(1.0f, amax) : 0.0f;
}

// Shared-memory views of the tables.
struct Tables {
    const float *smap, *umap, *sthr, *uthr;
    const unsigned char *sstart, *ustart;
};

// One quant block's place: where its elements, codes and absmax are.
struct Work {
    i64 pe;      // p / g / shadow index of its first element
    i64 ce;      // code index of its first element
    i64 blk;     // absmax index
    int count;   // elements (256 but in a segment's partial last block)
    bool vec;    // full and aligned: 16-byte accesses
    float decay;
};

// One lane's slots of a quant block as loaded (slot s: element
// (s >> 2) * 128 + lane * 4 + (s & 3) of the block, so each warp-wide
// access of a group of 4 is one contiguous span).
struct Lane8 {
    float p[PER_LANE], g[PER_LANE];
    unsigned mq[2], vq[2];  // codes, byte s & 3 of word s >> 2
    float ma, va;           // the block's absmax before the step
};

__device__ __forceinline__ int slot_elem(int lane, int s) {
    return (s >> 2) * 128 + lane * 4 + (s & 3);
}

// The segment holding quant block `blk`; `s` only moves forward because a
// warp's blocks increase. A null table means the single segment `one`.
__device__ __forceinline__ Work locate(const Adam8Seg* segs, const Adam8Seg& one, int& s, i64 blk, const AdamArgs& a) {
    Adam8Seg sg = one;
    if (segs) {
        while (blk >= segs[s + 1].block_off) s++;
        sg = segs[s];
    }
    Work w;
    i64 first = (blk - sg.block_off) * QBLOCK;
    w.pe = sg.param_off + first;
    w.ce = sg.code_off + first;
    w.blk = blk;
    w.count = (int)min((i64)QBLOCK, sg.len - first);
    w.vec = sg.aligned && w.count == QBLOCK;
    w.decay = __fsub_rn(1.0f, __fmul_rn(a.lr, sg.wd));
    return w;
}

__device__ __forceinline__ void load(Lane8& d, const Work& w, const float* p, const void* g, int dtg,
                                     const unsigned char* mc, const unsigned char* vc, const float* mabs,
                                     const float* vabs, int lane) {
    d.ma = mabs[w.blk];
    d.va = vabs[w.blk];
    if (w.vec) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            i64 e = w.pe + h * 128 + lane * 4, c = w.ce + h * 128 + lane * 4;
            float4 pv = *(const float4*)(p + e);
            d.p[4 * h] = pv.x, d.p[4 * h + 1] = pv.y, d.p[4 * h + 2] = pv.z, d.p[4 * h + 3] = pv.w;
            if (dtg == DT_BF16) {
                uint2 raw = *(const uint2*)((const __nv_bfloat16*)g + e);
                __nv_bfloat162 lo = *(__nv_bfloat162*)&raw.x, hi = *(__nv_bfloat162*)&raw.y;
                d.g[4 * h] = __low2float(lo), d.g[4 * h + 1] = __high2float(lo);
                d.g[4 * h + 2] = __low2float(hi), d.g[4 * h + 3] = __high2float(hi);
            } else {
                float4 gv = *(const float4*)((const float*)g + e);
                d.g[4 * h] = gv.x, d.g[4 * h + 1] = gv.y, d.g[4 * h + 2] = gv.z, d.g[4 * h + 3] = gv.w;
            }
            d.mq[h] = *(const unsigned*)(mc + c);
            d.vq[h] = *(const unsigned*)(vc + c);
        }
        return;
    }
    d.mq[0] = d.mq[1] = d.vq[0] = d.vq[1] = 0u;
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        int j = slot_elem(lane, s);
        bool in = j < w.count;
        d.p[s] = in ? p[w.pe + j] : 0.0f;
        d.g[s] = in ? ld(g, dtg, w.pe + j) : 0.0f;
        unsigned shift = 8 * (s & 3);
        d.mq[s >> 2] |= (in ? (unsigned)mc[w.ce + j] : 0u) << shift;
        d.vq[s >> 2] |= (in ? (unsigned)vc[w.ce + j] : 0u) << shift;
    }
}

// Steps 1-2 for one element: updates p in place, returns the new m and v.
__device__ __forceinline__ void adam8_element(float& p, float g, unsigned mc, unsigned vc, float ma, float va,
                                              const Tables& t, const AdamArgs& a, float decay, float& m, float& v) {
    float gi = __fmul_rn(g, a.grad_scale);
    m = __fadd_rn(__fmul_rn(a.b1, __fmul_rn(t.smap[mc], ma)), __fmul_rn(__fsub_rn(1.0f, a.b1), gi));
    v = __fadd_rn(__fmul_rn(a.b2, __fmul_rn(t.umap[vc], va)), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.b2), gi), gi));
    float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.sqrt_bc2), a.eps);
    p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(a.step_size, m), den));
}

// Params (and shadow) back, then the codes of the new m, v.
__device__ __forceinline__ void store(const Lane8& d, const Work& w, float* p, __nv_bfloat16* shadow,
                                      unsigned char* mc, unsigned char* vc, const unsigned* cm, const unsigned* cv,
                                      int lane) {
    if (w.vec) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            i64 e = w.pe + h * 128 + lane * 4, c = w.ce + h * 128 + lane * 4;
            *(float4*)(p + e) = make_float4(d.p[4 * h], d.p[4 * h + 1], d.p[4 * h + 2], d.p[4 * h + 3]);
            if (shadow) {
                __nv_bfloat162 lo = __floats2bfloat162_rn(d.p[4 * h], d.p[4 * h + 1]);
                __nv_bfloat162 hi = __floats2bfloat162_rn(d.p[4 * h + 2], d.p[4 * h + 3]);
                uint2 sw;
                sw.x = *(unsigned*)&lo;
                sw.y = *(unsigned*)&hi;
                *(uint2*)(shadow + e) = sw;
            }
            *(unsigned*)(mc + c) = cm[4 * h] | cm[4 * h + 1] << 8 | cm[4 * h + 2] << 16 | cm[4 * h + 3] << 24;
            *(unsigned*)(vc + c) = cv[4 * h] | cv[4 * h + 1] << 8 | cv[4 * h + 2] << 16 | cv[4 * h + 3] << 24;
        }
        return;
    }
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        int j = slot_elem(lane, s);
        if (j < w.count) {
            p[w.pe + j] = d.p[s];
            if (shadow) shadow[w.pe + j] = __float2bfloat16_rn(d.p[s]);
            mc[w.ce + j] = (unsigned char)cm[s];
            vc[w.ce + j] = (unsigned char)cv[s];
        }
    }
}

// Steps 1-3 for the loaded block. Slots past `count` keep m = v = 0,
// which leaves the absmax as is, and are not stored.
__device__ __forceinline__ void update(Lane8& d, const Work& w, float* p, __nv_bfloat16* shadow, unsigned char* mc,
                                       unsigned char* vc, float* mabs, float* vabs, const Tables& t,
                                       const AdamArgs& a, int lane) {
    float m[PER_LANE], v[PER_LANE];
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        m[s] = v[s] = 0.0f;
        if (w.vec || slot_elem(lane, s) < w.count) {
            unsigned shift = 8 * (s & 3);
            unsigned mcode = (d.mq[s >> 2] >> shift) & 0xffu, vcode = (d.vq[s >> 2] >> shift) & 0xffu;
            adam8_element(d.p[s], d.g[s], mcode, vcode, d.ma, d.va, t, a, w.decay, m[s], v[s]);
        }
    }
    // Block max of |m|, |v| from 0 (fmaxf ignores NaN, like f32::max):
    // the maximum of the same values as on the CPU, in any order.
    float am = 0.0f, av = 0.0f;
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        am = fmaxf(am, fabsf(m[s]));
        av = fmaxf(av, fabsf(v[s]));
    }
    am = warp_max(am);
    av = warp_max(av);
    float inv_m = inverse_or_zero(am), inv_v = inverse_or_zero(av);
    unsigned cm[PER_LANE], cv[PER_LANE];
#pragma unroll
    for (int s = 0; s < PER_LANE; s++) {
        cm[s] = nearest_code(t.sstart, t.sthr, __fmul_rn(m[s], inv_m));
        cv[s] = nearest_code(t.ustart, t.uthr, __fmul_rn(v[s], inv_v));
    }
    store(d, w, p, shadow, mc, vc, cm, cv, lane);
    // Every lane read the old absmax in `load`, consumed before the
    // shuffles above, so lane 0 may overwrite it.
    if (lane == 0) {
        mabs[w.blk] = am;
        vabs[w.blk] = av;
    }
}

// The grid-stride loop over `blocks` quant blocks. PREFETCH: the next
// block's loads are issued before this block's arithmetic (they read
// other addresses than this block writes).
template <bool PREFETCH>
__device__ __forceinline__ void adamw8bit_body(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc,
                                               float* mabs, float* vabs, __nv_bfloat16* shadow, const uint4* maps,
                                               const Adam8Seg* segs, Adam8Seg one, i64 blocks, AdamArgs a) {
    __shared__ uint4 tab[TABLE_WORDS];
    for (int k = threadIdx.x; k < TABLE_WORDS; k += blockDim.x) tab[k] = maps[k];
    __syncthreads();
    const float* f = (const float*)tab;
    const unsigned char* starts = (const unsigned char*)(f + 1024);
    Tables t = {f, f + 256, f + 512, f + 768, starts, starts + 2 * BINS};
    int lane = threadIdx.x & 31, seg = 0;
    i64 blk = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5), stride = (i64)gridDim.x * WARPS;
    if (blk >= blocks) return;
    Work w = locate(segs, one, seg, blk, a);
    Lane8 cur;
    load(cur, w, p, g, dtg, mc, vc, mabs, vabs, lane);
    for (;;) {
        i64 next = blk + stride;
        bool more = next < blocks;
        Work nw;
        Lane8 nxt;
        if (PREFETCH && more) {
            nw = locate(segs, one, seg, next, a);
            load(nxt, nw, p, g, dtg, mc, vc, mabs, vabs, lane);
        }
        update(cur, w, p, shadow, mc, vc, mabs, vabs, t, a, lane);
        if (!more) return;
        if (!PREFETCH) {
            nw = locate(segs, one, seg, next, a);
            load(nxt, nw, p, g, dtg, mc, vc, mabs, vabs, lane);
        }
        blk = next;
        w = nw;
        cur = nxt;
    }
}

// `segs` null: the launch is the one segment `one` (a single tensor, its
// pointers at the view starts); else a table of segments plus sentinel.
extern "C" __global__ void __launch_bounds__(32 * WARPS)
adamw8bit_prefetch_k(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc, float* mabs, float* vabs,
                     __nv_bfloat16* shadow, const uint4* maps, const Adam8Seg* segs, Adam8Seg one, i64 blocks,
                     AdamArgs a) {
    adamw8bit_body<true>(p, g, dtg, mc, vc, mabs, vabs, shadow, maps, segs, one, blocks, a);
}

// The same held to 3 thread blocks per SM (80 registers, a few spilled):
// more warps to hide latency with, for the cost of the spills.
extern "C" __global__ void __launch_bounds__(32 * WARPS, 3)
adamw8bit_prefetch3_k(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc, float* mabs, float* vabs,
                      __nv_bfloat16* shadow, const uint4* maps, const Adam8Seg* segs, Adam8Seg one, i64 blocks,
                      AdamArgs a) {
    adamw8bit_body<true>(p, g, dtg, mc, vc, mabs, vabs, shadow, maps, segs, one, blocks, a);
}

// No prefetch: a lane's loads of one block all at once, then its
// arithmetic (80 registers, 3 thread blocks per SM).
extern "C" __global__ void __launch_bounds__(32 * WARPS)
adamw8bit_plain_k(float* p, const void* g, int dtg, unsigned char* mc, unsigned char* vc, float* mabs, float* vabs,
                  __nv_bfloat16* shadow, const uint4* maps, const Adam8Seg* segs, Adam8Seg one, i64 blocks,
                  AdamArgs a) {
    adamw8bit_body<false>(p, g, dtg, mc, vc, mabs, vabs, shadow, maps, segs, one, blocks, a);
}
