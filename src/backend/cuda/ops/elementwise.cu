// Elementwise ops on fp32 or bf16 buffers, and column sums (bias grads).

extern "C" __global__ void fill_k(void* x, int dt, i64 n, float v) {
    GRID_LOOP(i, n) st(x, dt, i, v);
}

// Copy with dtype conversion (also refreshes the bf16 shadow of weights).
extern "C" __global__ void convert_k(void* out, int dto, const void* in, int dti, i64 n) {
    GRID_LOOP(i, n) st(out, dto, i, ld(in, dti, i));
}

// Fast path of convert_k for the weight shadow: 4 fp32 -> 4 bf16 per thread.
extern "C" __global__ void f32_to_bf16_vec4_k(__nv_bfloat162* out, const float4* in, i64 n4) {
    GRID_LOOP(i, n4) {
        float4 v = in[i];
        out[2 * i] = __floats2bfloat162_rn(v.x, v.y);
        out[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
    }
}

extern "C" __global__ void add_k(void* out, int dto, const void* a, int dta, const void* b, int dtb, i64 n) {
    GRID_LOOP(i, n) st(out, dto, i, ld(a, dta, i) + ld(b, dtb, i));
}

extern "C" __global__ void accumulate_k(void* dst, int dtd, const void* src, int dts, i64 n) {
    GRID_LOOP(i, n) st(dst, dtd, i, ld(dst, dtd, i) + ld(src, dts, i));
}

extern "C" __global__ void scale_k(void* x, int dt, i64 n, float s) {
    GRID_LOOP(i, n) st(x, dt, i, ld(x, dt, i) * s);
}

// out[r, c] += bias[c]: used when the matmul bias epilogue cannot be used.
extern "C" __global__ void add_bias_k(void* out, int dto, const void* bias, int dtb, i64 rows, int cols) {
    GRID_LOOP(i, rows * cols) st(out, dto, i, ld(out, dto, i) + ld(bias, dtb, i % cols));
}

// Deterministic column sums, stage 1: block (32, 8) sums rows
// [chunk*rpc, (chunk+1)*rpc) of 32 columns into partial[chunk, col].
extern "C" __global__ void colsum_partial_k(float* partial, const void* x, int dt, i64 rows, int cols, int rpc) {
    __shared__ float acc[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    i64 r0 = (i64)blockIdx.y * rpc;
    i64 r1 = min(rows, r0 + rpc);
    float s = 0.0f;
    if (col < cols)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8) s += ld(x, dt, r * cols + col);
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int y = 1; y < 8; y++) s += acc[y][threadIdx.x];
        partial[(i64)blockIdx.y * cols + col] = s;
    }
}

// Stage 2: dst[c] += sum over chunks, in a fixed order (reproducible).
// Block (32 columns) x (32 lanes of chunks): lane y sums chunks y, y + 32,
// ... of its column, then lane 0 adds the 32 lane sums in order. (One
// thread per column summing hundreds of chunks took ~20 us for 2048 columns
// — a serial chain of dependent loads.)
extern "C" __global__ void colsum_finish_k(void* dst, int dt, const float* partial, int chunks, int cols) {
    __shared__ float red[32][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < cols)
        for (int k = threadIdx.y; k < chunks; k += 32) s += partial[(i64)k * cols + c];
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int y = 1; y < 32; y++) s += red[y][threadIdx.x];
        st(dst, dt, c, ld(dst, dt, c) + s);
    }
}

// dst[r, c] = src[r, c] inside src's rows × cols, else 0, over dst's rows ×
// cols (row pitches in elements), converting dtype. Pads a matrix out to a
// round size or copies a block back out of one: cuBLASLt runs far slower on
// an odd dimension (GPT-2's 50257-wide head: ~85 vs ~600 TFLOP/s).
extern "C" __global__ void copy_pad_k(void* dst, int dtd, i64 dst_ld, i64 dst_rows, int dst_cols,
                                      const void* src, int dts, i64 src_ld, i64 src_rows, int src_cols) {
    GRID_LOOP(i, dst_rows * dst_cols) {
        i64 r = i / dst_cols, c = i % dst_cols;
        float v = (r < src_rows && c < src_cols) ? ld(src, dts, r * src_ld + c) : 0.0f;
        st(dst, dtd, r * dst_ld + c, v);
    }
}

// out = a + b, all bf16 and 16-byte aligned, 8 elements per thread and
// iteration (n8 = n / 8; the host runs add_k on the tail).
extern "C" __global__ void add_bf16x8_k(__nv_bfloat16* out, const __nv_bfloat16* a, const __nv_bfloat16* b, i64 n8) {
    GRID_LOOP(i, n8) {
        float x[8], y[8];
        load_bf16x8(a + 8 * i, x);
        load_bf16x8(b + 8 * i, y);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] += y[k];
        store_bf16x8(out + 8 * i, x);
    }
}
