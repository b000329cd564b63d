// Fused Lion step (Chen et al. 2023), decoupled weight decay:
//   g = grad*grad_scale; p = p*decay - lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g
// decay = 1 - lr*wd comes from the host (f32, as the CPU computes it). Also
// writes the bf16 shadow of p when `shadow` is non-null (like adamw.cu).
// Explicit _rn intrinsics (no FMA contraction): bit-identical to the CPU,
// so sign() sees exactly the CPU's interpolation even next to zero.

struct LionHp {
    float lr, b1, b2, decay, grad_scale;
};

__device__ __forceinline__ float lion_one(float p, float g, float& m, const LionHp& h) {
    g = __fmul_rn(g, h.grad_scale);
    float c = __fadd_rn(__fmul_rn(h.b1, m), __fmul_rn(__fsub_rn(1.0f, h.b1), g));
    p = __fsub_rn(__fmul_rn(p, h.decay), __fmul_rn(h.lr, sign_of(c)));
    m = __fadd_rn(__fmul_rn(h.b2, m), __fmul_rn(__fsub_rn(1.0f, h.b2), g));
    return p;
}

// Generic: grads of any dtype, any alignment.
extern "C" __global__ void lion_k(float* p, const void* g, int dtg, float* m, __nv_bfloat16* shadow, i64 n,
                                  float lr, float b1, float b2, float decay, float grad_scale) {
    LionHp h = {lr, b1, b2, decay, grad_scale};
    GRID_LOOP(i, n) {
        float mi = m[i];
        float pi = lion_one(p[i], ld(g, dtg, i), mi, h);
        p[i] = pi;
        m[i] = mi;
        if (shadow) shadow[i] = __float2bfloat16_rn(pi);
    }
}

// Vectorized: all fp32, 16-byte aligned (shadow 8-byte aligned); n4 = n/4.
extern "C" __global__ void lion_vec4_k(float4* p, const float4* g, float4* m, uint2* shadow, i64 n4,
                                       float lr, float b1, float b2, float decay, float grad_scale) {
    LionHp h = {lr, b1, b2, decay, grad_scale};
    GRID_LOOP(i, n4) {
        float4 pi = p[i], gi = g[i], mi = m[i];
        pi.x = lion_one(pi.x, gi.x, mi.x, h);
        pi.y = lion_one(pi.y, gi.y, mi.y, h);
        pi.z = lion_one(pi.z, gi.z, mi.z, h);
        pi.w = lion_one(pi.w, gi.w, mi.w, h);
        p[i] = pi;
        m[i] = mi;
        if (shadow) shadow[i] = pack_bf16x4(pi);
    }
}
