// GELU, tanh approximation (GPT-2 gelu_new), fp32 math.

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)

__device__ __forceinline__ float gelu(float x) {
    float t = tanhf(GELU_K * (x + 0.044715f * x * x * x));
    return 0.5f * x * (1.0f + t);
}

extern "C" __global__ void gelu_fwd_k(void* out, int dto, const void* inp, int dti, i64 n) {
    GRID_LOOP(i, n) { st(out, dto, i, gelu(ld(inp, dti, i))); }
}

// d/dx = 0.5(1+t) + 0.5x(1-t^2) * k(1 + 3*0.044715 x^2).
__device__ __forceinline__ float gelu_grad(float x) {
    float t = tanhf(GELU_K * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
}

extern "C" __global__ void gelu_bwd_k(void* dinp, int dtdi, const void* inp, int dti, const void* dout, int dtdo,
                                      i64 n) {
    GRID_LOOP(i, n) { st(dinp, dtdi, i, ld(dout, dtdo, i) * gelu_grad(ld(inp, dti, i))); }
}

// bf16 everywhere, 16-byte aligned: 8 elements per thread and iteration
// (n8 = n / 8; the host runs the generic kernels on the tail).
union Bf16x8 {
    uint4 u;
    __nv_bfloat162 h[4];
};

extern "C" __global__ void gelu_fwd_bf16x8_k(uint4* out, const uint4* inp, i64 n8) {
    GRID_LOOP(i, n8) {
        Bf16x8 x, o;
        x.u = inp[i];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 v = __bfloat1622float2(x.h[k]);
            o.h[k] = __floats2bfloat162_rn(gelu(v.x), gelu(v.y));
        }
        out[i] = o.u;
    }
}

extern "C" __global__ void gelu_bwd_bf16x8_k(uint4* dinp, const uint4* inp, const uint4* dout, i64 n8) {
    GRID_LOOP(i, n8) {
        Bf16x8 x, g, d;
        x.u = inp[i];
        g.u = dout[i];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float2 xv = __bfloat1622float2(x.h[k]), gv = __bfloat1622float2(g.h[k]);
            d.h[k] = __floats2bfloat162_rn(gv.x * gelu_grad(xv.x), gv.y * gelu_grad(xv.y));
        }
        dinp[i] = d.u;
    }
}
