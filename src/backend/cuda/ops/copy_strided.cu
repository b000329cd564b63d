// Strided 2-D copies: rows of `cols` elements from a matrix with row stride
// `ss` into one with row stride `ds` (the layout transforms around Ulysses'
// all-to-alls: a block of heads out of every token row, or a token slice
// out of every sequence).

// Any dtypes (converted through fp32: bf16 -> bf16 is exact), optional +=.
extern "C" __global__ void copy_strided_k(void* dst, int dtd, i64 ds, const void* src, int dts, i64 ss, i64 rows,
                                          i64 cols, int accumulate) {
    GRID_LOOP(i, rows * cols) {
        const i64 r = i / cols, c = i - r * cols;
        float v = ld(src, dts, r * ss + c);
        if (accumulate) v += ld(dst, dtd, r * ds + c);
        st(dst, dtd, r * ds + c, v);
    }
}

// Plain copy in 16-byte units: same dtype on both sides, pointers, strides
// and columns all multiples of 16 bytes (the host checks), counted in uint4.
extern "C" __global__ void copy_strided_v16_k(uint4* dst, i64 ds, const uint4* src, i64 ss, i64 rows, i64 cols) {
    GRID_LOOP(i, rows * cols) {
        const i64 r = i / cols, c = i - r * cols;
        dst[r * ds + c] = src[r * ss + c];
    }
}
