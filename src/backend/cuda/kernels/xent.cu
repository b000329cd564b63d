// Fused softmax cross-entropy: one block per row, online max/sum in one
// pass (fp32), loss = lse - logit[target], optional gradient written in
// place: (softmax - onehot) * grad_scale. Probabilities are never stored.
// Rows are v wide; only the first `classes` columns are classes (the rest
// is vocabulary padding: outside the softmax, gradient 0).

#define IGNORE_ID 0xffffffffu

__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;  // both empty
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

extern "C" __global__ void xent_k(void* losses, int dtl, void* dlogits, int dtd, const void* logits, int dtx,
                                  const unsigned* targets, i64 v, i64 classes, float grad_scale) {
    __shared__ float sm_m[32], sm_s[32];
    __shared__ float s_lse, s_xt;
    i64 row = blockIdx.x;
    i64 base = row * v;
    float m = -INFINITY, s = 0.0f;
    for (i64 j = threadIdx.x; j < classes; j += blockDim.x) combine(m, s, ld(logits, dtx, base + j), 1.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        combine(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
    unsigned t = targets[row];
    bool ignore = t == IGNORE_ID;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) combine(sm_m[0], sm_s[0], sm_m[w], sm_s[w]);
        s_lse = sm_m[0] + logf(sm_s[0]);
        // Read the target logit before any thread overwrites the row (in place).
        s_xt = (!ignore && t < classes) ? ld(logits, dtx, base + t) : NAN;
        st(losses, dtl, row, ignore ? 0.0f : s_lse - s_xt);
    }
    __syncthreads();
    if (!dlogits) return;
    float lse = s_lse;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) {
        float g = ignore || j >= classes ? 0.0f : (expf(ld(logits, dtx, base + j) - lse) - (j == (i64)t ? 1.0f : 0.0f)) * grad_scale;
        st(dlogits, dtd, base + j, g);
    }
}
