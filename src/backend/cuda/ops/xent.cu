// Fused softmax cross-entropy: one row of logits at a time, loss =
// lse - logit[target], optional gradient (softmax - onehot) * grad_scale
// written in place. Probabilities are never stored. Rows are v wide; only
// the first `classes` columns are classes (the rest is vocabulary padding:
// outside the softmax, gradient 0). Targets IGNORE_ID: loss 0, gradient 0.
//
// Three kernels, fastest first (xent.rs picks):
// - xent_rows*: bf16 rows (v % 8 == 0) held in registers: each row is read
//   once and written once (on an H200, ~80% of a device-to-device copy's
//   bandwidth at GPT-2's and Llama 3's widths, against ~47% before);
// - xent_bf16x8_k: bf16 rows too wide for that (reads the row twice);
// - xent_k: any dtypes, any width.

#define IGNORE_ID 0xffffffffu

__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
    float mx = fmaxf(m, m2);
    if (mx == -INFINITY) return;  // both empty
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

__device__ __forceinline__ void warp_ms(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        combine(m, s, m2, s2);
    }
}

// Block-wide combine of each thread's running (max, sum of exp(x - max));
// every thread gets the block's pair. Each warp combines the <= 32 warp
// partials itself (5 shuffle steps) rather than one thread combining them
// in series: this sits on every row's critical path.
__device__ void block_ms(float& m, float& s) {
    __shared__ float2 part[32];
    warp_ms(m, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = make_float2(m, s);
    __syncthreads();
    const float2 p = lane < (int)(blockDim.x >> 5) ? part[lane] : make_float2(-INFINITY, 0.0f);
    m = p.x;
    s = p.y;
    warp_ms(m, s);
}

// Block-wide log-sum-exp; every thread gets the result.
__device__ float block_lse(float m, float s) {
    block_ms(m, s);
    return m + logf(s);
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
// 8 logits in the first pass instead of 16 exps. The fallback for rows
// wider than the register-resident kernels hold.
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

// ---------------------------------------------------------------------------
// Register-resident rows. The two-pass kernel above is latency-bound: a
// thread loads one 16-byte chunk, computes on it, then loads the next, and
// the gradient pass reads the row again. Here a row is split into 16-byte
// chunks of 8 bf16; a thread owns up to NCH of them (chunk first + c * nthr,
// so a warp's loads are contiguous), issues all its loads at once, keeps
// them in registers (4 a chunk) and works from there:
//   1. max over its valid classes (bf16x2 max: exact, 2 logits an op),
//   2. sum of exp(x - max) against that max: one exp per logit,
//   3. block (and cluster) combine of the (max, sum) pairs -> lse,
//   4. gradient exp(x - lse) * grad_scale from the registers: one exp per
//      logit, one 16-byte store a chunk.
// The row is read once and written once. Each thread writes only the chunks
// it read itself, so in place (dlogits == logits) needs no barrier, and the
// target logit comes from its owner's registers.
//
// Register budget: NCH 8 is 32 registers of row data; with the pointers,
// counters and the (m, s) pair it fits the 64 that __launch_bounds__(1024)
// allows (65536 per SM / 1024; ptxas 13.0 for sm_90: 64 for NCH 8, 63 and
// 59 with clusters, 32 for NCH 4, no spills). NCH 16 (64
// registers of data alone) cannot. So a CTA holds at most 1024 x 8 chunks =
// 65536 logits (GPT-2's 50304 fits); wider rows (Llama 3's 128256 is 256 KB
// of bf16: the whole register file of one SM) are split over a
// thread-block cluster of K CTAs on cc >= 9.0, each holding 1/K of the row,
// which combine their (max, sum) through distributed shared memory.
//
// Exponentials: exp(x - m) = 2^(x*log2e - m*log2e), the argument one FMA
// (x*log2e exact inside it, m*log2e rounded once per thread) and the power
// one ex2.approx.ftz (MUFU.EX2, relative error ~2^-22; CUDA's accurate
// expf is that same instruction after a two-FMA range reduction).
// - Loss, checked with FP32 (|d| <= 1e-5 * (rms + |loss|)): the rounding
//   of m*log2e scales all of a thread's terms by one factor within
//   |m| * 2^-24 * log2e * ln2 = |m| * 6e-8 relative (|m| <= ~40: 2.4e-6),
//   each term's argument rounding (|x - m| * 6e-8) and ex2 error (2.4e-7)
//   are smaller or average out, and fp32 sums of <= 64 terms then <= 2048
//   partials add ~1e-6. So lse is off by a few 1e-6 at most, against an
//   allowance of ~1e-5 * rms(loss) (~1e-4 for losses ~10): well inside.
// - Gradient, checked with bf16(1.0): |d| <= 2^-8 * (|g| + rms(g)). The
//   one bf16 rounding of the stored gradient alone can use the whole
//   2^-8 * |g| (bf16 has 8 significant bits: a value just above a power of
//   two rounds by up to 2^-8 of itself), so what comes before the rounding
//   must stay within the 2^-8 * rms(g) part. p = exp(x - lse) here is off
//   by the ex2 error plus the roundings of x*log2e - lse*log2e and of lse,
//   a few 1e-6 relative; times |g| <= grad_scale, a few 1e-6 * grad_scale
//   at most, below 2^-8 * rms(g) (~1e-5 * grad_scale at V = 128256, more
//   at smaller V). Keeping exp(x - max) from pass 2 (as fp16, in
//   place of the logits) would save the second exp, but its 2^-11
//   relative rounding is more than that allowance for any |g| above ~8
//   rms(g) (the target's -grad_scale*(1 - p), large probabilities).
// ftz flushes exps below 2^-126 to 0: < 1e-38 in any sum or gradient.

#define LOG2E 1.4426950408889634f
#define BF16X2_NEG_INF 0xff80ff80u  // two bf16 -inf: padding, absent chunks

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The two bf16 of a packed pair as floats (bf16 is the top half of an f32).
__device__ __forceinline__ float bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

// Lane-wise max of two bf16 pairs (exact; a NaN loses to a number, as in fmaxf).
__device__ __forceinline__ unsigned max_bf16x2(unsigned a, unsigned b) {
    unsigned d;
    asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}

__device__ __forceinline__ unsigned& word(uint4& u, int q) { return q == 0 ? u.x : q == 1 ? u.y : q == 2 ? u.z : u.w; }

// Logits k, k + 1 of pair w, with those at column >= n (padding) -> -inf.
__device__ __forceinline__ unsigned mask_pair(unsigned w, int n, int k) {
    return (k < n ? (w & 0xffffu) : 0xff80u) | (k + 1 < n ? (w & 0xffff0000u) : 0xff800000u);
}

// Distributed shared memory between the CTAs of a cluster (cc >= 9.0; the
// cluster kernels are compiled for it only).
__device__ __forceinline__ void cluster_arrive() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// `p` (a shared variable) in the CTA of cluster rank `rank`.
__device__ __forceinline__ float2 ld_cluster(const float2* p, unsigned rank) {
    float2 v = make_float2(-INFINITY, 0.0f);
#if __CUDA_ARCH__ >= 900
    unsigned a = (unsigned)__cvta_generic_to_shared(p), r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(r) : "memory");
#endif
    return v;
}

// The row's log-sum-exp from each thread's (max, sum), over the block and,
// for K > 1, the cluster. Leaves a cluster barrier arrived: the caller
// waits on it (cluster_wait) before exiting, so no CTA's shared memory goes
// away while a peer still reads it.
template <int K>
__device__ __forceinline__ float row_lse(float m, float s) {
    block_ms(m, s);
    if constexpr (K > 1) {
        __shared__ float2 mine;
        if (threadIdx.x == 0) mine = make_float2(m, s);
        cluster_arrive();
        cluster_wait();
        // Every CTA combines the K pairs in the same order: the same lse.
        float2 p[K];
#pragma unroll
        for (int r = 0; r < K; r++) p[r] = ld_cluster(&mine, r);
        m = -INFINITY;
        s = 0.0f;
#pragma unroll
        for (int r = 0; r < K; r++) combine(m, s, p[r].x, p[r].y);
        cluster_arrive();
    }
    return m + logf(s);
}

template <int NCH, int K>
__device__ __forceinline__ void xent_rows(void* losses, int dtl, __nv_bfloat16* dlogits, const __nv_bfloat16* logits,
                                          const unsigned* targets, i64 v, i64 classes, float grad_scale) {
    const i64 row = blockIdx.x / K;
    // This thread's chunks: first + c * nthr for c < NCH, while < v8.
    const int nthr = K * blockDim.x, first = (blockIdx.x % K) * blockDim.x + threadIdx.x;
    const int v8 = (int)(v >> 3), ncls = (int)classes;
    // 1. Every load in flight before any is used (streaming: read once),
    // the target's with them: waiting for it first would add a round trip
    // to every row (an IGNORE row's logits are read for nothing instead).
    const unsigned t = targets[row];
    const uint4* z = reinterpret_cast<const uint4*>(logits + row * v);
    uint4 r[NCH];
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        const int j8 = first + c * nthr;
        r[c] = j8 < v8 ? __ldcs(z + j8) : make_uint4(BF16X2_NEG_INF, BF16X2_NEG_INF, BF16X2_NEG_INF, BF16X2_NEG_INF);
    }
    if (t == IGNORE_ID) {  // the same for the whole cluster: no barriers on this path
        if (dlogits) {
            uint4* d = reinterpret_cast<uint4*>(dlogits + row * v);
#pragma unroll
            for (int c = 0; c < NCH; c++)
                if (first + c * nthr < v8) d[first + c * nthr] = make_uint4(0, 0, 0, 0);
        }
        if (first == 0) st(losses, dtl, row, 0.0f);
        return;
    }

    // The target logit, from the thread that holds it (t < classes: never padding).
    const bool valid = t < (unsigned)ncls, own_t = valid && (int)(t >> 3) % nthr == first;
    float xt = 0.0f;
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        if (own_t && (int)(t >> 3) == first + c * nthr) {
            const unsigned k = t & 7, w = word(r[c], k >> 1);
            xt = k & 1 ? bf16_hi(w) : bf16_lo(w);
        }
    }

    // Padding columns (and absent chunks) -> -inf: out of the max and the
    // sum, and exp(-inf) = 0 gives them gradient 0. Only the chunk that
    // straddles `classes` and those after it take this branch.
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        const int j0 = 8 * (first + c * nthr);
        if (j0 + 8 > ncls) {
#pragma unroll
            for (int q = 0; q < 4; q++) word(r[c], q) = mask_pair(word(r[c], q), ncls - j0, 2 * q);
        }
    }

    // 2. The thread's max, then the sum of exps against it (one exp per logit).
    unsigned mx2 = BF16X2_NEG_INF;
#pragma unroll
    for (int c = 0; c < NCH; c++)
#pragma unroll
        for (int q = 0; q < 4; q++) mx2 = max_bf16x2(mx2, word(r[c], q));
    const float m = fmaxf(bf16_lo(mx2), bf16_hi(mx2));
    const float mL = m == -INFINITY ? 0.0f : m * LOG2E;  // a thread of padding only: sum 0
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        if (first + c * nthr >= v8) continue;
        float e[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const unsigned w = word(r[c], q);
            e[q] = exp2_approx(fmaf(bf16_lo(w), LOG2E, -mL)) + exp2_approx(fmaf(bf16_hi(w), LOG2E, -mL));
        }
        s += (e[0] + e[1]) + (e[2] + e[3]);
    }

    // 3. The row's lse; the loss from the target's owner.
    const float lse = row_lse<K>(m, s);
    if (own_t) st(losses, dtl, row, lse - xt);
    if (!valid && first == 0) st(losses, dtl, row, NAN);  // a target past `classes`

    // 4. Gradient from the registers: exp(x - lse) * grad_scale, minus
    // grad_scale at the target (padding: exp(-inf) = 0).
    if (dlogits) {
        uint4* d = reinterpret_cast<uint4*>(dlogits + row * v);
        const float bL = lse * LOG2E;
#pragma unroll
        for (int c = 0; c < NCH; c++) {
            const int j8 = first + c * nthr;
            if (j8 >= v8) continue;
            uint4 o;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const unsigned w = word(r[c], q);
                float lo = exp2_approx(fmaf(bf16_lo(w), LOG2E, -bL)) * grad_scale;
                float hi = exp2_approx(fmaf(bf16_hi(w), LOG2E, -bL)) * grad_scale;
                if (own_t && (int)(t >> 3) == j8) {
                    if ((t & 7) == 2 * q) lo -= grad_scale;
                    if ((t & 7) == 2 * q + 1) hi -= grad_scale;
                }
                word(o, q) = pack_bf16x2(lo, hi);
            }
            __stcs(d + j8, o);
        }
    }
    if constexpr (K > 1) cluster_wait();
}

// Kernels of (NCH, cluster size K): one CTA per row for K = 1, else a
// cluster of K per row (the grid has K x rows CTAs).
#define XENT_ROWS(NCH, K, CLUSTER)                                                                                   \
    extern "C" CLUSTER __global__ void __launch_bounds__(1024)                                                       \
        xent_rows##NCH##_k##K(void* losses, int dtl, __nv_bfloat16* dlogits, const __nv_bfloat16* logits,           \
                              const unsigned* targets, i64 v, i64 classes, float grad_scale) {                        \
        xent_rows<NCH, K>(losses, dtl, dlogits, logits, targets, v, classes, grad_scale);                            \
    }
XENT_ROWS(4, 1, )
XENT_ROWS(8, 1, )
#if __CUDA_ARCH__ >= 900
XENT_ROWS(8, 2, __cluster_dims__(2, 1, 1))
XENT_ROWS(8, 4, __cluster_dims__(4, 1, 1))
#endif
