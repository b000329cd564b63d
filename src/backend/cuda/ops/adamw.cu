// Fused AdamW (PyTorch semantics, decoupled weight decay), one pass over
// params, grads and both moments; also writes the bf16 shadow of the params
// used by matmuls (when `shadow` is non-null), saving a separate refresh.
//   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= lr/bc1 * m / (sqrt(v)/sqrt_bc2 + eps)   (bc_i = 1 - b_i^t, from the host in fp64)

struct AdamArgs {
    float lr, b1, b2, eps, wd, grad_scale, step_size, sqrt_bc2;  // step_size = lr / bc1
};

__device__ __forceinline__ float adamw_one(float p, float g, float& m, float& v, const AdamArgs& a) {
    g *= a.grad_scale;
    p *= 1.0f - a.lr * a.wd;
    m = a.b1 * m + (1.0f - a.b1) * g;
    v = a.b2 * v + (1.0f - a.b2) * g * g;
    return p - a.step_size * m / (sqrtf(v) / a.sqrt_bc2 + a.eps);
}

// Generic: grads of any dtype, any alignment.
extern "C" __global__ void adamw_k(float* p, const void* g, int dtg, float* m, float* v, __nv_bfloat16* shadow,
                                   i64 n, AdamArgs a) {
    GRID_LOOP(i, n) {
        float mi = m[i], vi = v[i];
        float pi = adamw_one(p[i], ld(g, dtg, i), mi, vi, a);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (shadow) shadow[i] = __float2bfloat16_rn(pi);
    }
}

// Four elements: p, m, v updated in place, their bf16 shadow written when
// `shadow` is non-null. Streaming loads/stores (evict-first): every byte is
// touched once per step, caching it only evicts other data.
// `gi`: the four gradients, loaded by the caller (fp32 or bf16 storage).
__device__ __forceinline__ void adamw_four(float4* p, float4 gi, float4* m, float4* v, uint2* shadow, i64 i,
                                           const AdamArgs& a) {
    float4 pi = __ldcs(p + i), mi = __ldcs(m + i), vi = __ldcs(v + i);
    pi.x = adamw_one(pi.x, gi.x, mi.x, vi.x, a);
    pi.y = adamw_one(pi.y, gi.y, mi.y, vi.y, a);
    pi.z = adamw_one(pi.z, gi.z, mi.z, vi.z, a);
    pi.w = adamw_one(pi.w, gi.w, mi.w, vi.w, a);
    __stcs(p + i, pi);
    __stcs(m + i, mi);
    __stcs(v + i, vi);
    if (shadow) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(pi.x, pi.y), hi = __floats2bfloat162_rn(pi.z, pi.w);
        uint2 packed;
        packed.x = *reinterpret_cast<unsigned*>(&lo);
        packed.y = *reinterpret_cast<unsigned*>(&hi);
        __stcs(shadow + i, packed);
    }
}

// Vectorized: all fp32, 16-byte aligned (shadow 8-byte aligned); n4 = n/4.
// The host handles the n % 4 tail with adamw_k.
extern "C" __global__ void adamw_vec4_k(float4* p, const float4* g, float4* m, float4* v, uint2* shadow, i64 n4,
                                        AdamArgs a) {
    GRID_LOOP(i, n4) { adamw_four(p, __ldcs(g + i), m, v, shadow, i, a); }
}

// Four bf16 gradients (8 bytes, streaming load) widened to fp32 (exact).
__device__ __forceinline__ float4 ld_bf16x4(const uint2* g, i64 i) {
    uint2 raw = __ldcs(g + i);
    float2 lo = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&raw.x));
    float2 hi = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// adamw_vec4_k with bf16 gradients (train.grad_dtype = bf16), 8-byte
// aligned: the same arithmetic on the widened values.
extern "C" __global__ void adamw_vec4_bf16g_k(float4* p, const uint2* g, float4* m, float4* v, uint2* shadow, i64 n4,
                                              AdamArgs a) {
    GRID_LOOP(i, n4) { adamw_four(p, ld_bf16x4(g, i), m, v, shadow, i, a); }
}

// One segment of adamw_segments_vec4_k, in float4 units: params/grads
// [p4, p4 + len), state [s4, s4 + len), covering [start4, start4 + len) of
// the launch's index space. Layout shared with adamw.rs (32 bytes).
struct AdamSeg {
    i64 p4, s4, start4;
    float wd;
    int pad;
};

// Many segments of one parameter buffer in one launch (a model's decayed
// matrices and undecayed norms interleave in its layout). Segments are
// sorted by start4 and a thread's index only grows, so it advances through
// the table instead of searching it.
extern "C" __global__ void adamw_segments_vec4_k(float4* p, const float4* g, float4* m, float4* v, uint2* shadow,
                                                 const AdamSeg* segs, int nseg, i64 total4, AdamArgs a) {
    int s = 0;
    GRID_LOOP(i, total4) {
        while (s + 1 < nseg && segs[s + 1].start4 <= i) s++;
        const AdamSeg sg = segs[s];
        AdamArgs as = a;
        as.wd = sg.wd;
        const i64 j = i - sg.start4;
        adamw_four(p + sg.p4, __ldcs(g + sg.p4 + j), m + sg.s4, v + sg.s4, shadow ? shadow + sg.p4 : nullptr, j, as);
    }
}

// adamw_segments_vec4_k with bf16 gradients (in units of 4 values: 8 bytes).
extern "C" __global__ void adamw_segments_vec4_bf16g_k(float4* p, const uint2* g, float4* m, float4* v, uint2* shadow,
                                                       const AdamSeg* segs, int nseg, i64 total4, AdamArgs a) {
    int s = 0;
    GRID_LOOP(i, total4) {
        while (s + 1 < nseg && segs[s + 1].start4 <= i) s++;
        const AdamSeg sg = segs[s];
        AdamArgs as = a;
        as.wd = sg.wd;
        const i64 j = i - sg.start4;
        adamw_four(p + sg.p4, ld_bf16x4(g + sg.p4, j), m + sg.s4, v + sg.s4, shadow ? shadow + sg.p4 : nullptr, j, as);
    }
}
