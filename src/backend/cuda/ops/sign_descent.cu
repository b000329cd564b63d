// Sign descent (signSGD), FRUGAL's state-free update, decoupled decay:
//   p = p*decay - lr*sign(grad*grad_scale),  decay = 1 - lr*wd from the host.
// Writes the bf16 shadow of p when `shadow` is non-null (like adamw.cu).
// _rn intrinsics: no FMA contraction, bit-identical to the CPU reference.

__device__ __forceinline__ float sign_step(float p, float g, float lr, float decay, float grad_scale) {
    return __fsub_rn(__fmul_rn(p, decay), __fmul_rn(lr, sign_of(__fmul_rn(g, grad_scale))));
}

// Generic: grads of any dtype, any alignment.
extern "C" __global__ void sign_descent_k(float* p, const void* g, int dtg, __nv_bfloat16* shadow, i64 n, float lr,
                                          float decay, float grad_scale) {
    GRID_LOOP(i, n) {
        float pi = sign_step(p[i], ld(g, dtg, i), lr, decay, grad_scale);
        p[i] = pi;
        if (shadow) shadow[i] = __float2bfloat16_rn(pi);
    }
}

// Vectorized: fp32, 16-byte aligned (shadow 8-byte aligned); n4 = n/4.
extern "C" __global__ void sign_descent_vec4_k(float4* p, const float4* g, uint2* shadow, i64 n4, float lr,
                                               float decay, float grad_scale) {
    GRID_LOOP(i, n4) {
        float4 pi = p[i], gi = g[i];
        pi.x = sign_step(pi.x, gi.x, lr, decay, grad_scale);
        pi.y = sign_step(pi.y, gi.y, lr, decay, grad_scale);
        pi.z = sign_step(pi.z, gi.z, lr, decay, grad_scale);
        pi.w = sign_step(pi.w, gi.w, lr, decay, grad_scale);
        p[i] = pi;
        if (shadow) shadow[i] = pack_bf16x4(pi);
    }
}
