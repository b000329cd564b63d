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

// Block-wide log-sum-exp from each thread's running (max, sum); every
// thread gets the result. Uses 64 floats of shared memory.
__device__ float block_lse(float m, float s) {
    __shared__ float sm_m[32], sm_s[32];
    __shared__ float s_lse;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        combine(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) combine(sm_m[0], sm_s[0], sm_m[w], sm_s[w]);
        s_lse = sm_m[0] + logf(sm_s[0]);
    }
    __syncthreads();
    return s_lse;
}

extern "C" __global__ void xent_k(void* losses, int dtl, void* dlogits, int dtd, const void* logits, int dtx,
                                  const unsigned* targets, i64 v, i64 classes, float grad_scale) {
    i64 row = blockIdx.x;
    i64 base = row * v;
    float m = -INFINITY, s = 0.0f;
    for (i64 j = threadIdx.x; j < classes; j += blockDim.x) combine(m, s, ld(logits, dtx, base + j), 1.0f);
    const float lse = block_lse(m, s);
    const unsigned t = targets[row];
    const bool ignore = t == IGNORE_ID;
    if (threadIdx.x == 0) {
        const float xt = (!ignore && t < classes) ? ld(logits, dtx, base + t) : NAN;
        st(losses, dtl, row, ignore ? 0.0f : lse - xt);
    }
    // The target logit is read before any thread overwrites the row (in place).
    __syncthreads();
    if (!dlogits) return;
    for (i64 j = threadIdx.x; j < v; j += blockDim.x) {
        float g = ignore || j >= classes ? 0.0f : (expf(ld(logits, dtx, base + j) - lse) - (j == (i64)t ? 1.0f : 0.0f)) * grad_scale;
        st(dlogits, dtd, base + j, g);
    }
}

// bf16 logits and dlogits, rows 16-byte aligned (v % 8 == 0): the same
// computation with 8 logits per 16-byte load. One max and nine exps per
// 8 logits in the first pass instead of 16 exps.
extern "C" __global__ void xent_bf16x8_k(void* losses, int dtl, __nv_bfloat16* dlogits, const __nv_bfloat16* logits,
                                         const unsigned* targets, i64 v, i64 classes, float grad_scale) {
    const i64 row = blockIdx.x, v8 = v / 8;
    const __nv_bfloat16* z = logits + row * v;
    float m = -INFINITY, s = 0.0f;
    for (i64 j8 = threadIdx.x; j8 < v8; j8 += blockDim.x) {
        float f[8], mg = -INFINITY;
        load_bf16x8(z + 8 * j8, f);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (j8 * 8 + k >= classes) f[k] = -INFINITY;  // padding
            mg = fmaxf(mg, f[k]);
        }
        if (mg == -INFINITY) continue;  // all padding
        float sg = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) sg += expf(f[k] - mg);
        combine(m, s, mg, sg);
    }
    const float lse = block_lse(m, s);
    const unsigned t = targets[row];
    const bool ignore = t == IGNORE_ID;
    if (threadIdx.x == 0) {
        const float xt = (!ignore && t < classes) ? __bfloat162float(z[t]) : NAN;
        st(losses, dtl, row, ignore ? 0.0f : lse - xt);
    }
    __syncthreads();
    if (!dlogits) return;
    __nv_bfloat16* d = dlogits + row * v;
    for (i64 j8 = threadIdx.x; j8 < v8; j8 += blockDim.x) {
        float g[8];
        load_bf16x8(z + 8 * j8, g);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const i64 col = j8 * 8 + k;
            g[k] = ignore || col >= classes ? 0.0f : (expf(g[k] - lse) - (col == (i64)t ? 1.0f : 0.0f)) * grad_scale;
        }
        store_bf16x8(d + 8 * j8, g);
    }
}
