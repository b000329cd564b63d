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
extern "C" __global__ void gelu_fwd_bf16x8_k(__nv_bfloat16* out, const __nv_bfloat16* inp, i64 n8) {
    GRID_LOOP(i, n8) {
        float x[8];
        load_bf16x8(inp + 8 * i, x);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = gelu(x[k]);
        store_bf16x8(out + 8 * i, x);
    }
}

extern "C" __global__ void gelu_bwd_bf16x8_k(__nv_bfloat16* dinp, const __nv_bfloat16* inp, const __nv_bfloat16* dout,
                                             i64 n8) {
    GRID_LOOP(i, n8) {
        float x[8], g[8];
        load_bf16x8(inp + 8 * i, x);
        load_bf16x8(dout + 8 * i, g);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] *= gelu_grad(x[k]);
        store_bf16x8(dinp + 8 * i, g);
    }
}
