// Adam's second moment and denominator applied to a separate numerator
// (APOLLO, COSMOS):
//   g = grad*grad_scale; v = b2*v + (1-b2)*g*g; out = num / (sqrt(v)/sqrt_bc2 + eps)
// sqrt_bc2 comes from the host (fp64 bias correction, or 1). _rn intrinsics:
// no FMA contraction, bit-identical to the CPU reference.

__device__ __forceinline__ float precond_one(float num, float g, float& v, float b2, float eps, float sqrt_bc2,
                                             float grad_scale) {
    g = __fmul_rn(g, grad_scale);
    v = __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), g), g));
    return __fdiv_rn(num, __fadd_rn(__fdiv_rn(__fsqrt_rn(v), sqrt_bc2), eps));
}

// Generic: num and grads of any dtype, any alignment; out and v fp32.
extern "C" __global__ void rms_precondition_k(float* out, const void* num, int dtn, float* v, const void* g, int dtg,
                                              i64 n, float b2, float eps, float sqrt_bc2, float grad_scale) {
    GRID_LOOP(i, n) {
        float vi = v[i];
        out[i] = precond_one(ld(num, dtn, i), ld(g, dtg, i), vi, b2, eps, sqrt_bc2, grad_scale);
        v[i] = vi;
    }
}

// Vectorized: all fp32, 16-byte aligned; n4 = n/4.
extern "C" __global__ void rms_precondition_vec4_k(float4* out, const float4* num, float4* v, const float4* g, i64 n4,
                                                   float b2, float eps, float sqrt_bc2, float grad_scale) {
    GRID_LOOP(i, n4) {
        float4 ni = num[i], vi = v[i], gi = g[i], o;
        o.x = precond_one(ni.x, gi.x, vi.x, b2, eps, sqrt_bc2, grad_scale);
        o.y = precond_one(ni.y, gi.y, vi.y, b2, eps, sqrt_bc2, grad_scale);
        o.z = precond_one(ni.z, gi.z, vi.z, b2, eps, sqrt_bc2, grad_scale);
        o.w = precond_one(ni.w, gi.w, vi.w, b2, eps, sqrt_bc2, grad_scale);
        out[i] = o;
        v[i] = vi;
    }
}
