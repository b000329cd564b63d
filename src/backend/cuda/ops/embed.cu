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

// dwte[tok[n],:] += dout[n,:] into a bf16 gradient (train.grad_dtype =
// bf16), without atomics or memory beyond the block's shared memory: one
// block (256 threads) per row n, and only the FIRST row holding token t
// works: it sums dout over every row holding t, in row order, in fp32
// (acc: c floats of dynamic shared memory), then adds the sum to dwte[t,:]
// and rounds once. Deterministic; O(rows^2) token compares (L1-resident,
// ~1 ms at 32k rows), no O(vocab * c) fp32 copy of the gradient.
extern "C" __global__ void __launch_bounds__(256)
embed_bwd_wte_rows_k(void* dwte, int dtw, const void* dout, int dtd, const unsigned* tok, i64 rows, int c,
                     unsigned vocab) {
    extern __shared__ float acc[];
    __shared__ int list[256];
    __shared__ int warp_hits[8];
    const i64 n = blockIdx.x;
    const unsigned t = tok[n];
    if (t >= vocab) return;
    int earlier = 0;
    for (i64 m = threadIdx.x; m < n && !earlier; m += blockDim.x) earlier = tok[m] == t;
    if (__syncthreads_or(earlier)) return;
    for (int j = threadIdx.x; j < c; j += blockDim.x) acc[j] = 0.0f;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (i64 m0 = n; m0 < rows; m0 += blockDim.x) {
        const i64 m = m0 + threadIdx.x;
        const bool hit = m < rows && tok[m] == t;
        const unsigned ballot = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_hits[warp] = __popc(ballot);
        __syncthreads();
        int base = 0, total = 0;
        for (int w = 0; w < 8; w++) {
            base += w < warp ? warp_hits[w] : 0;
            total += warp_hits[w];
        }
        // This chunk's hits, in row order.
        if (hit) list[base + __popc(ballot & ((1u << lane) - 1u))] = (int)(m - m0);
        __syncthreads();
        if (total == 0) continue;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float s = acc[j];
            for (int k = 0; k < total; k++) s += ld(dout, dtd, (m0 + list[k]) * c + j);
            acc[j] = s;
        }
    }
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        const i64 i = (i64)t * c + j;
        st(dwte, dtw, i, ld(dwte, dtw, i) + acc[j]);
    }
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
