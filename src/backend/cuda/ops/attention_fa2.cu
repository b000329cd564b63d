// FlashAttention-2 style causal attention on tensor cores: mma.sync
// m16n8k16 bf16 -> fp32, fragments loaded with ldmatrix, tiles staged
// through cp.async (double-buffered). Same contract as attention.cu:
// qkv rows (n = b*T + t) are [q heads (H*D) | k heads (KV*D) | v heads];
// query head h reads kv head h / (H/KV); out [N, H*D]; lse [B, H, T] is the
// natural-log log-sum-exp of the scaled scores of each row.
//
// Needs bf16 qkv / out / dout / dqkv, 16-byte aligned, D in {64, 128}; the
// host falls back to attention_mma.cu / attention.cu otherwise.
//
// Scores are kept in the log2 domain (s * scale * log2(e)) so every
// exponential is one ex2 instruction.
//
// Backward (deterministic, no atomics):
//   fa2_bwd_prep   delta = rowsum(dO * O), lse2 = lse * log2(e), both fp32
//                  and padded to a multiple of 64 rows (padding: lse2 = +inf,
//                  so recomputed probabilities of padding rows are exactly 0).
//   fa2_bwd_dkv    one block per (64-key tile, kv head, batch); 4 warps x 16
//                  keys; dK, dV accumulate in registers over every query head
//                  of the group and every query tile at or after the keys.
//   fa2_bwd_dq     one block per (64-query tile, head, batch); recomputes P
//                  and dP (2 extra matmuls of 5) so dQ needs no atomics and
//                  no fp32 scratch: bitwise reproducible.

struct AttnDims {
    int B, T, H, KV;
};

typedef __nv_bfloat16 bf16;

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// 16-byte async copy global -> shared; pred false writes 16 zero bytes.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c[16x8] += a[16x16] * b[16x8], bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> bf16x2 (lo in the low half, as the mma fragments expect).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// Two adjacent 16x8 fp32 accumulator tiles (c0 | c1, columns 0-7 | 8-15)
// as the bf16 A fragment of a 16x16 operand: the accumulator layout of
// mma.m16n8k16 is the A layout's, half the width, so no shuffles.
__device__ __forceinline__ void acc_to_a_frag(unsigned* a, const float* c0, const float* c1) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Async copy of ROWS rows x D bf16 (row `stride` elements apart in global)
// into shared memory with row stride LD = D + 8 (16 bytes of padding put
// the 8 rows of each ldmatrix phase in distinct banks). Rows >= valid are
// zero-filled, so padding never feeds NaN garbage into a 0 * x product.
template <int ROWS, int D>
__device__ __forceinline__ void tile_async(bf16* dst, const bf16* src, i64 stride, int valid) {
    const int V = D / 8, LD = D + 8;
    for (int idx = threadIdx.x; idx < ROWS * V; idx += blockDim.x) {
        int r = idx / V, c = idx % V;
        bool ok = r < valid;
        cp_async16(dst + r * LD + c * 8, src + (i64)(ok ? r : 0) * stride + c * 8, ok);
    }
}

// ldmatrix address patterns (lane -> row, col of a 16x16 bf16 block at
// (r0, c0) of a row-major smem tile with stride LD):
//  A operand (rows = M, cols = K), and B operand stored [K][N] via .trans:
__device__ __forceinline__ int a_row(int lane) { return lane & 15; }
__device__ __forceinline__ int a_col(int lane) { return (lane >> 4) * 8; }
//  B operand stored [N][K] (non-trans): two n8 tiles x k16.
__device__ __forceinline__ int b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__device__ __forceinline__ int b_col(int lane) { return ((lane >> 3) & 1) * 8; }

// ---------------------------------------------------------------------------
// Forward. Block = 4 warps x (16*MT) query rows; 64-key K/V tiles double
// buffered. S, P and O live in registers; P goes from the S accumulator
// layout straight into the A operand of P*V (no shared-memory round trip).
// The tile loops stream their operands through two shared-memory buffers:
// before working on tile j, issue tile j + 1 into the other buffer (if there
// is one), then wait until tile j has landed and every thread sees it.
// `issue(j, buf)` starts the async copies of tile j into buffer `buf`.
template <typename Issue>
__device__ __forceinline__ void double_buffer_next(int j, int n, Issue issue) {
    if (j + 1 < n) {
        issue(j + 1, (j + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// Issues key/value tile j (BK rows of one kv head) into buffer `buf`.
template <int BK, int D>
__device__ __forceinline__ void kv_tile_async(bf16* sK, bf16* sV, const bf16* kbase, const bf16* vbase, i64 W, int T, int j, int buf) {
    const int LD = D + 8;
    tile_async<BK, D>(sK + buf * BK * LD, kbase + (i64)j * BK * W, W, T - j * BK);
    tile_async<BK, D>(sV + buf * BK * LD, vbase + (i64)j * BK * W, W, T - j * BK);
}

template <int D, int MT>
__device__ void fa2_fwd(bf16* out, void* lse, int dtl, const bf16* qkv, AttnDims a) {
    const int BQ = 64 * MT, BK = 64, LD = D + 8, ND = D / 8, KD = D / 16;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sK = sQ + BQ * LD;      // 2 buffers
    bf16* sV = sK + 2 * BK * LD;  // 2 buffers
    // Causal: the last query tiles have the most keys; start them first.
    int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int q0 = qt * BQ, g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T;
    const bf16* kbase = qkv + rb * W + (i64)(a.H + g) * D;
    const bf16* vbase = qkv + rb * W + (i64)(a.H + a.KV + g) * D;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wr0 = q0 + warp * 16 * MT;  // this warp's first query row
    int nk = (min(a.T, q0 + BQ) - 1) / BK + 1;
    const float sl2 = LOG2E / sqrtf((float)D);

    tile_async<BQ, D>(sQ, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
    auto issue_kv = [&](int j, int buf) { kv_tile_async<BK, D>(sK, sV, kbase, vbase, W, a.T, j, buf); };
    issue_kv(0, 0);
    cp_async_commit();

    unsigned qf[MT][KD][4];
    float o[MT][ND][4], m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int n = 0; n < ND; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
    }

    for (int j = 0; j < nk; j++) {
        double_buffer_next(j, nk, issue_kv);
        if (j == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kk = 0; kk < KD; kk++)
                    ldsm_x4(qf[mt][kk], sQ + (warp * 16 * MT + mt * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
        }
        const bf16* ks = sK + (j & 1) * BK * LD;
        const bf16* vs = sV + (j & 1) * BK * LD;
        int k0 = j * BK;
        // Warp-uniform: skip tiles entirely above the diagonal for this warp.
        if (k0 <= wr0 + 16 * MT - 1) {
            float s[MT][BK / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < BK / 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
#pragma unroll
                for (int np = 0; np < BK / 16; np++) {
                    unsigned bfr[4];
                    ldsm_x4(bfr, ks + (np * 16 + b_row(lane)) * LD + kk * 16 + b_col(lane));
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma16816(s[mt][2 * np], qf[mt][kk], bfr[0], bfr[1]);
                        mma16816(s[mt][2 * np + 1], qf[mt][kk], bfr[2], bfr[3]);
                    }
                }
            }
            bool diag = k0 + BK - 1 > wr0;
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    int row = wr0 + mt * 16 + (lane >> 2) + hf * 8;
                    float mx = -INFINITY;
#pragma unroll
                    for (int n = 0; n < BK / 8; n++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            int key = k0 + n * 8 + 2 * (lane & 3) + e;
                            float v = s[mt][n][2 * hf + e] * sl2;
                            if (diag && key > row) v = -INFINITY;
                            s[mt][n][2 * hf + e] = v;
                            mx = fmaxf(mx, v);
                        }
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    // Tile 0 always holds key 0 <= row, so m is finite from
                    // then on and exp2(-inf - m) is a clean 0.
                    float mnew = fmaxf(m[mt][hf], mx);
                    float corr = fast_exp2(m[mt][hf] - mnew);
                    m[mt][hf] = mnew;
                    float sum = 0.0f;
#pragma unroll
                    for (int n = 0; n < BK / 8; n++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            float p = fast_exp2(s[mt][n][2 * hf + e] - mnew);
                            s[mt][n][2 * hf + e] = p;
                            sum += p;
                        }
                    // Per-thread partial row sum; the quad is reduced once at
                    // the end (corr is the same for the 4 lanes of a row).
                    l[mt][hf] = l[mt][hf] * corr + sum;
#pragma unroll
                    for (int n = 0; n < ND; n++) {
                        o[mt][n][2 * hf] *= corr;
                        o[mt][n][2 * hf + 1] *= corr;
                    }
                }
            }
            // O += P V: the S accumulators of key columns [16kk, 16kk+16)
            // are exactly the A fragment of a k16 step.
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                unsigned pa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    acc_to_a_frag(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    unsigned bfr[4];
                    ldsm_x4_t(bfr, vs + (kk * 16 + a_row(lane)) * LD + dp * 16 + a_col(lane));
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        mma16816(o[mt][2 * dp], pa[mt], bfr[0], bfr[1]);
                        mma16816(o[mt][2 * dp + 1], pa[mt], bfr[2], bfr[3]);
                    }
                }
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float lt = l[mt][hf];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            int row = wr0 + mt * 16 + (lane >> 2) + hf * 8;
            if (row >= a.T) continue;
            float inv = 1.0f / lt;
            bf16* orow = out + (rb + row) * (i64)a.H * D + (i64)h * D + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < ND; n++)
                *reinterpret_cast<unsigned*>(orow + n * 8) = pack_bf16(o[mt][n][2 * hf] * inv, o[mt][n][2 * hf + 1] * inv);
            if ((lane & 3) == 0) st(lse, dtl, ((i64)b * a.H + h) * a.T + row, (m[mt][hf] + log2f(lt)) * LN2);
        }
    }
}

// ---------------------------------------------------------------------------
// Backward prep: one warp per (b, h, t) with t < Tp (T rounded up to 64).
extern "C" __global__ void __launch_bounds__(256)
    fa2_bwd_prep(float* delta, float* lse2, const void* dout, int dtdo, const void* out, int dto, const void* lse,
                 int dtl, AttnDims a, int D, int Tp) {
    i64 idx = (i64)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (idx >= (i64)a.B * a.H * Tp) return;
    int t = (int)(idx % Tp);
    i64 bh = idx / Tp;
    int h = (int)(bh % a.H), b = (int)(bh / a.H);
    float s = 0.0f;
    if (t < a.T) {
        i64 base = ((i64)b * a.T + t) * a.H * D + (i64)h * D;
        for (int d = lane; d < D; d += 32) s += ld(dout, dtdo, base + d) * ld(out, dto, base + d);
        s = warp_sum(s);
    }
    if (lane == 0) {
        delta[idx] = s;
        lse2[idx] = t < a.T ? ld(lse, dtl, bh * a.T + t) * LOG2E : INFINITY;
    }
}

// ---------------------------------------------------------------------------
// dK, dV. Block = 4 warps x 16 keys (64-key tile); loops over the query
// heads of the kv group and over 64-query tiles from the diagonal on, with
// Q / dO / lse2 / delta tiles double-buffered. Computed transposed (keys are
// the M dimension): S^T = K Q^T, dP^T = V dO^T, so P^T and dS^T land in the
// A-operand layout of dV += P^T dO and dK += dS^T Q.
// KV_REGS: keep the K and V A-fragments in registers for the whole block
// (D = 64); for D = 128 that would cost 64 more registers, so they are
// re-read from shared memory.
template <int D, bool KV_REGS>
__device__ void fa2_bwd_dkv(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2,
                            AttnDims a, int Tp) {
    const int BN = 64, BM = 64, LD = D + 8, ND = D / 8, KD = D / 16;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);
    bf16* sV = sK + BN * LD;
    bf16* sQ = sV + BN * LD;        // 2 buffers
    bf16* sO = sQ + 2 * BM * LD;    // dO, 2 buffers
    float* sL = reinterpret_cast<float*>(sO + 2 * BM * LD);  // lse2, 2 x 64
    float* sD = sL + 2 * BM;                                 // delta, 2 x 64
    int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    int k0 = kt * BN, group = a.H / a.KV;
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T, WO = (i64)a.H * D;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kw0 = k0 + warp * 16;
    int nq = (a.T - 1) / BM + 1 - kt;  // query tiles kt .. end, per head
    int niter = group * nq;
    const float sl2 = LOG2E / sqrtf((float)D);

    auto issue = [&](int it, int buf) {
        int h = g * group + it / nq, q0 = (kt + it % nq) * BM;
        tile_async<BM, D>(sQ + buf * BM * LD, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
        tile_async<BM, D>(sO + buf * BM * LD, dout + (rb + q0) * WO + (i64)h * D, WO, a.T - q0);
        // lse2 / delta are padded to Tp rows: always 16 full chunks each.
        if (threadIdx.x < 32) {
            int c = threadIdx.x & 15;
            const float* src = (threadIdx.x < 16 ? lse2 : delta) + ((i64)b * a.H + h) * Tp + q0 + c * 4;
            float* dst = (threadIdx.x < 16 ? sL : sD) + buf * BM + c * 4;
            cp_async16(dst, src, true);
        }
    };

    tile_async<BN, D>(sK, qkv + (rb + k0) * W + (i64)(a.H + g) * D, W, a.T - k0);
    tile_async<BN, D>(sV, qkv + (rb + k0) * W + (i64)(a.H + a.KV + g) * D, W, a.T - k0);
    issue(0, 0);
    cp_async_commit();

    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    unsigned kf[KV_REGS ? KD : 1][4], vf[KV_REGS ? KD : 1][4];

    for (int it = 0; it < niter; it++) {
        double_buffer_next(it, niter, issue);
        if (KV_REGS && it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
                ldsm_x4(kf[KV_REGS ? kk : 0], sK + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
                ldsm_x4(vf[KV_REGS ? kk : 0], sV + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
            }
        }
        int buf = it & 1;
        const bf16* qs = sQ + buf * BM * LD;
        const bf16* os = sO + buf * BM * LD;
        const float* ls = sL + buf * BM;
        const float* ds_ = sD + buf * BM;
        int q0 = (kt + it % nq) * BM;
        float st_[BM / 8][4], dp[BM / 8][4];
#pragma unroll
        for (int n = 0; n < BM / 8; n++)
            st_[n][0] = st_[n][1] = st_[n][2] = st_[n][3] = dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
            unsigned ka[4], va[4];
            if (KV_REGS) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    ka[i] = kf[KV_REGS ? kk : 0][i];
                    va[i] = vf[KV_REGS ? kk : 0][i];
                }
            } else {
                ldsm_x4(ka, sK + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
                ldsm_x4(va, sV + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
            }
#pragma unroll
            for (int np = 0; np < BM / 16; np++) {
                unsigned bq[4], bo[4];
                ldsm_x4(bq, qs + (np * 16 + b_row(lane)) * LD + kk * 16 + b_col(lane));
                ldsm_x4(bo, os + (np * 16 + b_row(lane)) * LD + kk * 16 + b_col(lane));
                mma16816(st_[2 * np], ka, bq[0], bq[1]);
                mma16816(st_[2 * np + 1], ka, bq[2], bq[3]);
                mma16816(dp[2 * np], va, bo[0], bo[1]);
                mma16816(dp[2 * np + 1], va, bo[2], bo[3]);
            }
        }
        // P^T and dS^T, in place. Only the diagonal tile (q0 == k0) needs
        // the causal mask; padding queries have lse2 = +inf, so P = 0 there.
        bool diag = q0 < kw0 + 15;
#pragma unroll
        for (int n = 0; n < BM / 8; n++) {
            int qc = n * 8 + 2 * (lane & 3);
            float2 lq = *reinterpret_cast<const float2*>(ls + qc);
            float2 dq = *reinterpret_cast<const float2*>(ds_ + qc);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = kw0 + (lane >> 2) + (e >> 1) * 8, query = q0 + qc + (e & 1);
                float p = fast_exp2(st_[n][e] * sl2 - ((e & 1) ? lq.y : lq.x));
                if (diag && key > query) p = 0.0f;
                st_[n][e] = p;
                dp[n][e] = p * (dp[n][e] - ((e & 1) ? dq.y : dq.x));
            }
        }
        // dV += P^T dO and dK += dS^T Q (B operands stored [query][d]: .trans).
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) {
            unsigned pa[4], sa[4];
            acc_to_a_frag(pa, st_[2 * kk], st_[2 * kk + 1]);
            acc_to_a_frag(sa, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int dn = 0; dn < D / 16; dn++) {
                unsigned bo[4], bq[4];
                ldsm_x4_t(bo, os + (kk * 16 + a_row(lane)) * LD + dn * 16 + a_col(lane));
                ldsm_x4_t(bq, qs + (kk * 16 + a_row(lane)) * LD + dn * 16 + a_col(lane));
                mma16816(dv[2 * dn], pa, bo[0], bo[1]);
                mma16816(dv[2 * dn + 1], pa, bo[2], bo[3]);
                mma16816(dk[2 * dn], sa, bq[0], bq[1]);
                mma16816(dk[2 * dn + 1], sa, bq[2], bq[3]);
            }
        }
        __syncthreads();
    }

    const float scale = 1.0f / sqrtf((float)D);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int key = kw0 + (lane >> 2) + hf * 8;
        if (key >= a.T) continue;
        bf16* row = dqkv + (rb + key) * W + 2 * (lane & 3);
        bf16* rk = row + (i64)(a.H + g) * D;
        bf16* rv = row + (i64)(a.H + a.KV + g) * D;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            *reinterpret_cast<unsigned*>(rk + n * 8) = pack_bf16(dk[n][2 * hf] * scale, dk[n][2 * hf + 1] * scale);
            *reinterpret_cast<unsigned*>(rv + n * 8) = pack_bf16(dv[n][2 * hf], dv[n][2 * hf + 1]);
        }
    }
}

// ---------------------------------------------------------------------------
// dQ. Block = 4 warps x 16 query rows; 64-key K/V tiles double-buffered up
// to the diagonal. S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K.
template <int D>
__device__ void fa2_bwd_dq(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2,
                           AttnDims a, int Tp) {
    const int BQ = 64, BK = 64, LD = D + 8, ND = D / 8, KD = D / 16;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sO = sQ + BQ * LD;
    bf16* sK = sO + BQ * LD;      // 2 buffers
    bf16* sV = sK + 2 * BK * LD;  // 2 buffers
    int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int q0 = qt * BQ, g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T, WO = (i64)a.H * D;
    const bf16* kbase = qkv + rb * W + (i64)(a.H + g) * D;
    const bf16* vbase = qkv + rb * W + (i64)(a.H + a.KV + g) * D;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wr0 = q0 + warp * 16;
    int nk = qt + 1;  // BQ == BK: key tiles 0 .. qt
    const float sl2 = LOG2E / sqrtf((float)D);

    tile_async<BQ, D>(sQ, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
    tile_async<BQ, D>(sO, dout + (rb + q0) * WO + (i64)h * D, WO, a.T - q0);
    auto issue_kv = [&](int j, int buf) { kv_tile_async<BK, D>(sK, sV, kbase, vbase, W, a.T, j, buf); };
    issue_kv(0, 0);
    cp_async_commit();

    // Per-thread rows: wr0 + lane/4 (+8). Padded arrays: always in bounds.
    i64 lrow = ((i64)b * a.H + h) * Tp + wr0 + (lane >> 2);
    float lr[2] = {lse2[lrow], lse2[lrow + 8]};
    float dr[2] = {delta[lrow], delta[lrow + 8]};

    unsigned qf[KD][4], of[KD][4];
    float dq[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    for (int j = 0; j < nk; j++) {
        double_buffer_next(j, nk, issue_kv);
        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
                ldsm_x4(qf[kk], sQ + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
                ldsm_x4(of[kk], sO + (warp * 16 + a_row(lane)) * LD + kk * 16 + a_col(lane));
            }
        }
        const bf16* ks = sK + (j & 1) * BK * LD;
        const bf16* vs = sV + (j & 1) * BK * LD;
        int k0 = j * BK;
        if (k0 <= wr0 + 15) {
            float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
            for (int n = 0; n < BK / 8; n++)
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; kk++) {
#pragma unroll
                for (int np = 0; np < BK / 16; np++) {
                    unsigned bk[4], bv[4];
                    ldsm_x4(bk, ks + (np * 16 + b_row(lane)) * LD + kk * 16 + b_col(lane));
                    ldsm_x4(bv, vs + (np * 16 + b_row(lane)) * LD + kk * 16 + b_col(lane));
                    mma16816(s[2 * np], qf[kk], bk[0], bk[1]);
                    mma16816(s[2 * np + 1], qf[kk], bk[2], bk[3]);
                    mma16816(dp[2 * np], of[kk], bv[0], bv[1]);
                    mma16816(dp[2 * np + 1], of[kk], bv[2], bv[3]);
                }
            }
            bool diag = k0 + BK - 1 > wr0;
#pragma unroll
            for (int n = 0; n < BK / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + n * 8 + 2 * (lane & 3) + (e & 1);
                    int row = wr0 + (lane >> 2) + (e >> 1) * 8;
                    float p = fast_exp2(s[n][e] * sl2 - lr[e >> 1]);
                    if (diag && key > row) p = 0.0f;
                    dp[n][e] = p * (dp[n][e] - dr[e >> 1]);
                }
            // dQ += dS K (K stored [key][d] is B = [K][N]: .trans).
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                unsigned sa[4];
                acc_to_a_frag(sa, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
                for (int dn = 0; dn < D / 16; dn++) {
                    unsigned bk[4];
                    ldsm_x4_t(bk, ks + (kk * 16 + a_row(lane)) * LD + dn * 16 + a_col(lane));
                    mma16816(dq[2 * dn], sa, bk[0], bk[1]);
                    mma16816(dq[2 * dn + 1], sa, bk[2], bk[3]);
                }
            }
        }
        __syncthreads();
    }

    const float scale = 1.0f / sqrtf((float)D);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int row = wr0 + (lane >> 2) + hf * 8;
        if (row >= a.T) continue;
        bf16* dst = dqkv + (rb + row) * W + (i64)h * D + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < ND; n++)
            *reinterpret_cast<unsigned*>(dst + n * 8) = pack_bf16(dq[n][2 * hf] * scale, dq[n][2 * hf + 1] * scale);
    }
}

#define FA2_INSTANTIATE(D, MT, KVR)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128)                                                                \
        fa2_fwd_d##D(bf16* out, void* lse, int dtl, const bf16* qkv, AttnDims a) {                                   \
        fa2_fwd<D, MT>(out, lse, dtl, qkv, a);                                                                       \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) fa2_bwd_dkv_d##D(                                              \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2, AttnDims a, int Tp) { \
        fa2_bwd_dkv<D, KVR>(dqkv, dout, qkv, delta, lse2, a, Tp);                                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) fa2_bwd_dq_d##D(                                               \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2, AttnDims a, int Tp) { \
        fa2_bwd_dq<D>(dqkv, dout, qkv, delta, lse2, a, Tp);                                                          \
    }

FA2_INSTANTIATE(64, 2, true)
FA2_INSTANTIATE(128, 1, false)
