// Token (+ learned position) embedding, forward and backward.

// One block per row n: out[n,:] = wte[tok[n],:] (+ wpe[n % seq,:]).
// A token id >= vocab leaves the row zero instead of reading out of bounds.
extern "C" __global__ void embed_fwd_k(void* out, int dto, const unsigned* tok, const void* wte, int dtw,
                                       const void* wpe, int dtp, int seq, int c, unsigned vocab) {
    i64 row = blockIdx.x;
    unsigned t = tok[row];
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float v = t < vocab ? ld(wte, dtw, (i64)t * c + j) : 0.0f;
        if (wpe) v += ld(wpe, dtp, (i64)(row % seq) * c + j);
        st(out, dto, row * c + j, v);
    }
}

// dwte[tok[n],:] += dout[n,:]. Rows sharing a token collide, so fp32
// atomics (summation order, hence the last bits, may vary run to run).
extern "C" __global__ void embed_bwd_wte_k(float* dwte, const void* dout, int dtd, const unsigned* tok, int c,
                                           unsigned vocab) {
    i64 row = blockIdx.x;
    unsigned t = tok[row];
    if (t >= vocab) return;
    for (int j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(&dwte[(i64)t * c + j], ld(dout, dtd, row * c + j));
}

// dwpe[p,:] += sum over rows n = p, p+seq, ... < rows of dout[n,:]; thread
// per (p, j), deterministic.
extern "C" __global__ void embed_bwd_wpe_k(void* dwpe, int dtp, const void* dout, int dtd, int seq, int c, i64 rows) {
    GRID_LOOP(i, (i64)seq * c) {
        i64 p = i / c, j = i % c;
        float s = 0.0f;
        for (i64 n = p; n < rows; n += seq) s += ld(dout, dtd, n * c + j);
        st(dwpe, dtp, i, ld(dwpe, dtp, i) + s);
    }
}
