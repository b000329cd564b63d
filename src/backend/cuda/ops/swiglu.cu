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

// bf16 everywhere, f a multiple of 8, 16-byte aligned buffers (the model
// pads its SwiGLU width, `model.ffn_multiple`): 8 columns per thread and
// iteration through 16-byte loads and stores; same 2-D launch over f / 8.
extern "C" __global__ void swiglu_fwd_bf16x8_k(__nv_bfloat16* out, const __nv_bfloat16* inp, i64 n, i64 f) {
    ROW_LOOP(r, n) {
        const __nv_bfloat16* gate = inp + r * 2 * f;
        COL_LOOP(j8, f / 8) {
            const i64 j = 8 * j8;
            float g[8], u[8];
            load_bf16x8(gate + j, g);
            load_bf16x8(gate + f + j, u);
#pragma unroll
            for (int k = 0; k < 8; k++) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
            store_bf16x8(out + r * f + j, g);
        }
    }
}

extern "C" __global__ void swiglu_bwd_bf16x8_k(__nv_bfloat16* dinp, const __nv_bfloat16* inp,
                                               const __nv_bfloat16* dout, i64 n, i64 f) {
    ROW_LOOP(r, n) {
        const __nv_bfloat16* gate = inp + r * 2 * f;
        __nv_bfloat16* dgate = dinp + r * 2 * f;
        COL_LOOP(j8, f / 8) {
            const i64 j = 8 * j8;
            float g[8], u[8], d[8];
            load_bf16x8(gate + j, g);
            load_bf16x8(gate + f + j, u);
            load_bf16x8(dout + r * f + j, d);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float sig = 1.0f / (1.0f + expf(-g[k]));
                const float dg = d[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
                u[k] = d[k] * g[k] * sig;  // dup
                g[k] = dg;
            }
            store_bf16x8(dgate + j, g);
            store_bf16x8(dgate + f + j, u);
        }
    }
}
