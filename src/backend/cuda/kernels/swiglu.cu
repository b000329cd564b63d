// SwiGLU: rows of inp are [gate (F) | up (F)]; out = silu(gate) * up.
// 2-D launch: blockIdx.x/threadIdx.x over a row's F columns, blockIdx.y
// strides over rows, so no per-element 64-bit division by F.

#define ROW_LOOP(r, n) for (i64 r = blockIdx.y; r < (n); r += gridDim.y)
#define COL_LOOP(j, f) for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < (f); j += (i64)gridDim.x * blockDim.x)

extern "C" __global__ void swiglu_fwd_k(void* out, int dto, const void* inp, int dti, i64 n, i64 f) {
    ROW_LOOP(r, n) {
        const i64 in_row = r * 2 * f, out_row = r * f;
        COL_LOOP(j, f) {
            float g = ld(inp, dti, in_row + j), u = ld(inp, dti, in_row + f + j);
            float sig = 1.0f / (1.0f + expf(-g));
            st(out, dto, out_row + j, g * sig * u);
        }
    }
}

// dgate = dout * up * sig * (1 + g (1 - sig)), dup = dout * silu(g).
extern "C" __global__ void swiglu_bwd_k(void* dinp, int dtdi, const void* inp, int dti, const void* dout, int dtdo,
                                        i64 n, i64 f) {
    ROW_LOOP(r, n) {
        const i64 in_row = r * 2 * f, out_row = r * f;
        COL_LOOP(j, f) {
            float g = ld(inp, dti, in_row + j), u = ld(inp, dti, in_row + f + j);
            float d = ld(dout, dtdo, out_row + j);
            float sig = 1.0f / (1.0f + expf(-g));
            st(dinp, dtdi, in_row + j, d * u * sig * (1.0f + g * (1.0f - sig)));
            st(dinp, dtdi, in_row + f + j, d * g * sig);
        }
    }
}
