// SwiGLU: rows of inp are [gate (F) | up (F)]; out = silu(gate) * up.

extern "C" __global__ void swiglu_fwd_k(void* out, int dto, const void* inp, int dti, i64 n, i64 f) {
    GRID_LOOP(i, n * f) {
        i64 r = i / f, j = i % f;
        float g = ld(inp, dti, r * 2 * f + j), u = ld(inp, dti, r * 2 * f + f + j);
        float sig = 1.0f / (1.0f + expf(-g));
        st(out, dto, i, g * sig * u);
    }
}

// dgate = dout * up * sig * (1 + g (1 - sig)), dup = dout * silu(g).
extern "C" __global__ void swiglu_bwd_k(void* dinp, int dtdi, const void* inp, int dti, const void* dout, int dtdo,
                                        i64 n, i64 f) {
    GRID_LOOP(i, n * f) {
        i64 r = i / f, j = i % f;
        float g = ld(inp, dti, r * 2 * f + j), u = ld(inp, dti, r * 2 * f + f + j);
        float d = ld(dout, dtdo, i);
        float sig = 1.0f / (1.0f + expf(-g));
        st(dinp, dtdi, r * 2 * f + j, d * u * sig * (1.0f + g * (1.0f - sig)));
        st(dinp, dtdi, r * 2 * f + f + j, d * g * sig);
    }
}
