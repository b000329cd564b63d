// GELU, tanh approximation (GPT-2 gelu_new), fp32 math.

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)

extern "C" __global__ void gelu_fwd_k(void* out, int dto, const void* inp, int dti, i64 n) {
    GRID_LOOP(i, n) {
        float x = ld(inp, dti, i);
        float t = tanhf(GELU_K * (x + 0.044715f * x * x * x));
        st(out, dto, i, 0.5f * x * (1.0f + t));
    }
}

// d/dx = 0.5(1+t) + 0.5x(1-t^2) * k(1 + 3*0.044715 x^2).
extern "C" __global__ void gelu_bwd_k(void* dinp, int dtdi, const void* inp, int dti, const void* dout, int dtdo,
                                      i64 n) {
    GRID_LOOP(i, n) {
        float x = ld(inp, dti, i);
        float t = tanhf(GELU_K * (x + 0.044715f * x * x * x));
        float dt = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        st(dinp, dtdi, i, ld(dout, dtdo, i) * dt);
    }
}
