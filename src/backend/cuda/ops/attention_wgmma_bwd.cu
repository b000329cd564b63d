// Causal attention backward for Hopper (sm_90a): wgmma tensor-core
// instructions for all five products, same contract as the FlashAttention-2
// backward in attention_fa2.cu (qkv / dout / dqkv layouts, GQA, bf16 in and
// out, fp32 accumulation, D in {64, 128}) and the same preprocessing:
// fa2_bwd_prep writes delta = rowsum(dO * O) and lse2 = lse * log2(e), both
// fp32, padded to Tp rows (a multiple of 128 here; padding rows have
// lse2 = +inf, so their recomputed probabilities are exactly 0).
// Compiled with wgmma_common.cuh in front (tile layouts, descriptors and
// fragments: the top of attention_wgmma.cu), for compute_90a only.
//
// Two kernels, deterministic (no atomics; each writes its own part of dqkv):
//   wgmma_bwd_dkv  one block per (128-key tile, kv head, batch): 2 warpgroups
//                  x 64 keys. Keys are the M dimension (transposed, as
//                  fa2_bwd_dkv): S^T = K Q^T and dP^T = V dO^T (both operands
//                  K-major in shared memory), P^T and dS^T computed in the
//                  accumulators, which are already the A-fragment layout of
//                  dV += P^T dO and dK += dS^T Q (B = dO / Q MN-major, the
//                  transposed descriptor the forward uses for V). Loops over
//                  the query heads of the group and the query tiles (BM) from
//                  the diagonal on; Q, dO, lse2, delta double-buffered.
//   wgmma_bwd_dq   one block per (128-query tile, head, batch): 2 warpgroups
//                  x 64 queries, the forward's structure. S = Q K^T,
//                  dP = dO V^T, dS = P (dP - delta), dQ += dS K (dS from
//                  registers, K MN-major); K and V tiles (BK) double-buffered.
//                  It recomputes S and dP (7 products in all instead of 5)
//                  so that dQ needs neither atomics nor an fp32 scratch.
// Each kernel comes in two variants with the same per-tile arithmetic
// (dkv_tile, dq_tile):
//   wgmma_bwd_*      every thread loads with cp.async, one tile in flight
//                    while the other is used, block-wide barriers (the
//                    structure of wgmma_fwd, the forward's "wgmma-sync"
//                    variant); FERROTRON_ATTN_BWD=wgmma-sync.
//   wgmma_tma_bwd_*  warp-specialized: a TMA producer warpgroup feeds the 2
//                    consumer warpgroups through mbarrier stages (the
//                    structure of wgmma_tma_fwd), and inside a tile each
//                    wgmma group is waited for only when its result is
//                    needed (OVERLAP); FERROTRON_ATTN_BWD=wgmma.
// tools/wgmma_bwd_layout.py emulates the layouts, descriptors, fragments and
// masks on the CPU; tools/wgmma_bwd_pipeline.py model-checks the barriers.

template <int N>
__device__ __forceinline__ void wgmma_ss(float* d, u64 da, u64 db, int scale_d) {
    if constexpr (N == 64) {
        wgmma_m64n64k16_ss(d, da, db, scale_d);
    } else {
        wgmma_m64n128k16_ss(d, da, db, scale_d);
    }
}

template <int N>
__device__ __forceinline__ void wgmma_rs(float* d, const unsigned* a, u64 db) {
    if constexpr (N == 64) {
        wgmma_m64n64k16_rs(d, a, db);
    } else {
        wgmma_m64n128k16_rs(d, a, db);
    }
}

// Issues c = A B^T over K = D (both K-major in shared memory, swizzled
// tiles): A is 64 rows of a tile of AROWS rows (sA already at the
// warpgroup's rows), B a whole tile of N rows. No commit.
template <int D, int AROWS, int N>
__device__ __forceinline__ void issue_abt(float* c, unsigned sA, unsigned sB) {
    u64 a0 = smem_desc(sA, 16, 1024), b0 = smem_desc(sB, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        u64 da = desc_plus(a0, (kk >> 2) * AROWS * 128 + (kk & 3) * 32);
        u64 db = desc_plus(b0, (kk >> 2) * N * 128 + (kk & 3) * 32);
        wgmma_ss<N>(c, da, db, kk);
    }
}

// Issues c[64 x D] += A B with A = KR/16 register fragments (K = KR rows of
// B) and B a tile of KR rows x D MN-major in shared memory. No commit.
template <int D, int KR>
__device__ __forceinline__ void issue_rs(float* c, unsigned (*a)[4], unsigned sB) {
    u64 b0 = smem_desc(sB, KR * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < KR / 16; kk++) wgmma_rs<D>(c, a[kk], desc_plus(b0, kk * 16 * 128));
}

// ---------------------------------------------------------------------------
// dK, dV: one query tile (BM queries) against the warpgroup's 64 keys.
// Accumulator element [4i + 2hf + e] of S^T / dP^T: key `key + 8hf`, query
// q0 + 8i + 2(lane%4) + e. ls / ds: the tile's lse2 / delta in shared memory.
// OVERLAP (the warp-specialized kernel): four wgmma groups, each waited for
// only when its result is needed, so P^T is computed while dP^T runs and dS^T
// while dV += P^T dO runs; otherwise two groups, each waited for at once.
template <int D, int BM, int BN, bool OVERLAP>
__device__ __forceinline__ void dkv_tile(float* dk, float* dv, unsigned sKw, unsigned sVw, unsigned sQb, unsigned sOb,
                                         const float* ls, const float* ds, int q0, int kw0, int key, int lane, float sl2) {
    float st[BM / 2], dpt[BM / 2];
    unsigned pf[BM / 16][4], sf[BM / 16][4];
    wgmma_fence();
    issue_abt<D, BN, BM>(st, sKw, sQb);
    if (OVERLAP) wgmma_commit();
    issue_abt<D, BN, BM>(dpt, sVw, sOb);
    wgmma_commit();
    if (OVERLAP) {
        wgmma_wait<1>();  // S^T is done; dP^T may still run
    } else {
        wgmma_wait<0>();
        pin<BM / 2>(dpt);
    }
    pin<BM / 2>(st);
    bool diag = q0 < kw0 + 63;  // warpgroup-uniform: some key after some query
#pragma unroll
    for (int i = 0; i < BM / 8; i++) {
        int qc = 8 * i + 2 * (lane & 3);
        float2 lq = *reinterpret_cast<const float2*>(ls + qc);
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int x = 4 * i + 2 * hf + e;
                float p = fast_exp2(st[x] * sl2 - (e ? lq.y : lq.x));
                if (diag && key + 8 * hf > q0 + qc + e) p = 0.0f;
                st[x] = p;
            }
    }
    pack_p<BM>(pf, st);
    if (OVERLAP) {
        wgmma_fence();
        issue_rs<D, BM>(dv, pf, sOb);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T is done; dV += P^T dO may still run
        pin<BM / 2>(dpt);
    }
#pragma unroll
    for (int i = 0; i < BM / 8; i++) {
        float2 dq = *reinterpret_cast<const float2*>(ds + 8 * i + 2 * (lane & 3));
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int x = 4 * i + 2 * hf + e;
                dpt[x] = st[x] * (dpt[x] - (e ? dq.y : dq.x));
            }
    }
    pack_p<BM>(sf, dpt);
    wgmma_fence();
    if (!OVERLAP) issue_rs<D, BM>(dv, pf, sOb);
    issue_rs<D, BM>(dk, sf, sQb);
    wgmma_commit();
    wgmma_wait<0>();
    pin<D / 2>(dv);
    pin<D / 2>(dk);
    pin<BM / 4>(&pf[0][0]);
    pin<BM / 4>(&sf[0][0]);
}

// dK (times the softmax scale) and dV of this thread's keys `key` and
// key + 8 into kv head g's sections of dqkv, for keys < T.
template <int D>
__device__ __forceinline__ void store_dkv(bf16* dqkv, const float* dk, const float* dv, AttnDims a, int b, int g,
                                          int key, int lane) {
    const float scale = 1.0f / sqrtf((float)D);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int k = key + 8 * hf;
        if (k >= a.T) continue;
        bf16* row = dqkv + (rb + k) * W + 2 * (lane & 3);
        bf16* rk = row + (i64)(a.H + g) * D;
        bf16* rv = row + (i64)(a.H + a.KV + g) * D;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            *reinterpret_cast<unsigned*>(rk + 8 * i) = pack_bf16(dk[4 * i + 2 * hf] * scale, dk[4 * i + 2 * hf + 1] * scale);
            *reinterpret_cast<unsigned*>(rv + 8 * i) = pack_bf16(dv[4 * i + 2 * hf], dv[4 * i + 2 * hf + 1]);
        }
    }
}

template <int D, int BM, int NWG>
__device__ void wgmma_bwd_dkv(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2,
                              AttnDims a, int Tp) {
    const int BN = 64 * NWG, NT = 128 * NWG;
    const unsigned KBYTES = BN * D * 2, QBYTES = BM * D * 2;
    extern __shared__ unsigned char smem_raw[];
    // 1024-byte aligned tiles (the swizzle atom); the host adds 1024 bytes of slack.
    unsigned base = smem_u32(smem_raw);
    unsigned sK = (base + 1023u) & ~1023u;
    unsigned sV = sK + KBYTES;
    unsigned sQ = sV + KBYTES;       // 2 buffers
    unsigned sO = sQ + 2 * QBYTES;   // dO, 2 buffers
    unsigned sLD = sO + 2 * QBYTES;  // per buffer: lse2[BM], delta[BM]
    const float* fLD = reinterpret_cast<const float*>(smem_raw + (sLD - base));

    // Longest first: key tile 0 sees every query tile.
    int g = blockIdx.x, b = blockIdx.y, kt = blockIdx.z;
    int k0 = kt * BN, group = a.H / a.KV;
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T, WO = (i64)a.H * D;
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int kw0 = k0 + 64 * wg;                     // the warpgroup's first key
    int key = kw0 + 16 * warp + (lane >> 2);    // this thread's first key (second: + 8)
    int qt0 = k0 / BM;                          // the first query tile reaching key k0
    int nq = (a.T - 1) / BM + 1 - qt0;          // query tiles per head
    int niter = group * nq;
    const float sl2 = LOG2E / sqrtf((float)D);

    auto issue = [&](int it, int buf) {
        int h = g * group + it / nq, q0 = (qt0 + it % nq) * BM;
        tile_async<BM, D, NT>(sQ + buf * QBYTES, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
        tile_async<BM, D, NT>(sO + buf * QBYTES, dout + (rb + q0) * WO + (i64)h * D, WO, a.T - q0);
        // lse2 and delta are padded to Tp rows: BM/4 full 16-byte chunks each.
        if (threadIdx.x < BM / 2) {
            bool is_l = threadIdx.x < BM / 4;
            int c = threadIdx.x % (BM / 4);
            const float* src = (is_l ? lse2 : delta) + ((i64)b * a.H + h) * Tp + q0 + 4 * c;
            cp_async16(sLD + (buf * 2 * BM + (is_l ? 0 : BM) + 4 * c) * 4, src, true);
        }
    };

    tile_async<BN, D, NT>(sK, qkv + (rb + k0) * W + (i64)(a.H + g) * D, W, a.T - k0);
    tile_async<BN, D, NT>(sV, qkv + (rb + k0) * W + (i64)(a.H + a.KV + g) * D, W, a.T - k0);
    issue(0, 0);
    cp_async_commit();

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dk[i] = dv[i] = 0.0f;

    for (int it = 0; it < niter; it++) {
        // Start tile it + 1 into the other buffer (freed by the barrier that
        // ended iteration it - 1), then wait for tile it (and K, V).
        if (it + 1 < niter) {
            issue(it + 1, (it + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
        __syncthreads();
        int buf = it & 1, q0 = (qt0 + it % nq) * BM;
        const float* ls = fLD + buf * 2 * BM;
        dkv_tile<D, BM, BN, false>(dk, dv, sK + wg * 64 * 128, sV + wg * 64 * 128, sQ + buf * QBYTES, sO + buf * QBYTES,
                                   ls, ls + BM, q0, kw0, key, lane, sl2);
        __syncthreads();  // every warpgroup is done with buffer `buf`
    }

    store_dkv<D>(dqkv, dk, dv, a, b, g, key, lane);
}

// ---------------------------------------------------------------------------
// dQ: one key tile (BK keys) for the warpgroup's 64 query rows. Accumulator
// element [4i + 2hf + e] of S / dP: query `row + 8hf`, key k0 + 8i +
// 2(lane%4) + e. lr / dr: this thread's two rows' lse2 / delta.
// OVERLAP (the warp-specialized kernel): S and dP in two wgmma groups, P
// computed while dP runs.
template <int D, int BQ, int BK, bool OVERLAP>
__device__ __forceinline__ void dq_tile(float* dq, unsigned sQw, unsigned sOw, unsigned sKb, unsigned sVb,
                                        const float* lr, const float* dr, int k0, int r0, int row, int lane,
                                        float sl2) {
    float s[BK / 2], dp[BK / 2];
    wgmma_fence();
    issue_abt<D, BQ, BK>(s, sQw, sKb);
    if (OVERLAP) wgmma_commit();
    issue_abt<D, BQ, BK>(dp, sOw, sVb);
    wgmma_commit();
    wgmma_wait<OVERLAP ? 1 : 0>();  // S is done (and dP unless OVERLAP)
    pin<BK / 2>(s);
    bool diag = k0 + BK - 1 > r0;  // warpgroup-uniform
#pragma unroll
    for (int i = 0; i < BK / 8; i++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int x = 4 * i + 2 * hf + e;
                float p = fast_exp2(s[x] * sl2 - lr[hf]);
                if (diag && k0 + 8 * i + 2 * (lane & 3) + e > row + 8 * hf) p = 0.0f;
                s[x] = p;
            }
    if (OVERLAP) wgmma_wait<0>();
    pin<BK / 2>(dp);
#pragma unroll
    for (int x = 0; x < BK / 2; x++) dp[x] = s[x] * (dp[x] - dr[(x >> 1) & 1]);
    unsigned sf[BK / 16][4];
    pack_p<BK>(sf, dp);
    wgmma_fence();
    issue_rs<D, BK>(dq, sf, sKb);
    wgmma_commit();
    wgmma_wait<0>();
    pin<D / 2>(dq);
    pin<BK / 4>(&sf[0][0]);
}

// dQ (times the softmax scale) of this thread's rows `row` and row + 8
// into head h's section of dqkv, for rows < T.
template <int D>
__device__ __forceinline__ void store_dq(bf16* dqkv, const float* dq, AttnDims a, int b, int h, int row, int lane) {
    const float scale = 1.0f / sqrtf((float)D);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int r = row + 8 * hf;
        if (r >= a.T) continue;
        bf16* dst = dqkv + (rb + r) * W + (i64)h * D + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < D / 8; i++)
            *reinterpret_cast<unsigned*>(dst + 8 * i) = pack_bf16(dq[4 * i + 2 * hf] * scale, dq[4 * i + 2 * hf + 1] * scale);
    }
}

template <int D, int BK, int NWG>
__device__ void wgmma_bwd_dq(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2,
                             AttnDims a, int Tp) {
    const int BQ = 64 * NWG, NT = 128 * NWG;
    const unsigned QBYTES = BQ * D * 2, KBYTES = BK * D * 2;
    extern __shared__ unsigned char smem_raw[];
    unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned sO = sQ + QBYTES;
    unsigned sK = sO + QBYTES;       // 2 buffers
    unsigned sV = sK + 2 * KBYTES;   // 2 buffers

    // Longest first: blockIdx.z counts query tiles down from the last.
    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    int q0 = qt * BQ, g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T, WO = (i64)a.H * D;
    const bf16* kbase = qkv + rb * W + (i64)(a.H + g) * D;
    const bf16* vbase = qkv + rb * W + (i64)(a.H + a.KV + g) * D;
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int r0 = q0 + 64 * wg;                        // the warpgroup's first query row
    int row = r0 + 16 * warp + (lane >> 2);       // this thread's first row
    int nk = (min(a.T, q0 + BQ) - 1) / BK + 1;    // key tiles the block loads
    int wnk = r0 < a.T ? min(a.T - 1, r0 + 63) / BK + 1 : 0;  // ... the warpgroup uses
    const float sl2 = LOG2E / sqrtf((float)D);

    tile_async<BQ, D, NT>(sQ, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
    tile_async<BQ, D, NT>(sO, dout + (rb + q0) * WO + (i64)h * D, WO, a.T - q0);
    auto issue_kv = [&](int j) {
        unsigned buf = (j & 1) * KBYTES;
        tile_async<BK, D, NT>(sK + buf, kbase + (i64)j * BK * W, W, a.T - j * BK);
        tile_async<BK, D, NT>(sV + buf, vbase + (i64)j * BK * W, W, a.T - j * BK);
    };
    issue_kv(0);
    cp_async_commit();

    // Padded to Tp (a multiple of BQ) rows: always in bounds.
    i64 lrow = ((i64)b * a.H + h) * Tp + row;
    float lr[2] = {lse2[lrow], lse2[lrow + 8]};
    float dr[2] = {delta[lrow], delta[lrow + 8]};

    float dq[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dq[i] = 0.0f;

    for (int j = 0; j < nk; j++) {
        if (j + 1 < nk) {
            issue_kv(j + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_proxy_async();
        __syncthreads();
        if (j < wnk) {
            unsigned buf = (j & 1) * KBYTES;
            dq_tile<D, BQ, BK, false>(dq, sQ + wg * 64 * 128, sO + wg * 64 * 128, sK + buf, sV + buf, lr, dr, j * BK, r0,
                                      row, lane, sl2);
        }
        __syncthreads();  // every warpgroup is done with buffer j & 1
    }

    store_dq<D>(dqkv, dq, a, b, h, row, lane);
}

// ---------------------------------------------------------------------------
// Warp-specialized dK/dV (wgmma_tma_bwd_dkv), the forward's wgmma_tma_fwd
// structure: one producer warpgroup (its first thread issues every load)
// and NWG consumer warpgroups running dkv_tile unchanged, no block-wide
// barrier after the start.
// - Loads: K and V once (tensor map tkv over qkv, boxes of 64 columns x BN
//   rows), then per step the Q tile (tq over qkv) and the dO tile (tdo over
//   dout), BM rows each, with TMA, and the step's lse2 and delta rows (BM
//   floats each, contiguous: 1-D bulk copies) into stage it % NS. Rows past
//   T lie outside the maps and arrive as zeros.
// - Barriers: kv_full (count 1: the producer's arrive.expect_tx, then the
//   bytes); per stage q_full (same) and q_empty (count = every consumer
//   thread). Step it is phase it / NS of its stage's barriers. Every consumer
//   thread uses every step (the causal mask zeroes P where a warpgroup's
//   keys follow the queries), so each phase of q_empty gets all its arrivals.

// 1-D bulk copy of `bytes` (a multiple of 16, both addresses 16-byte
// aligned) from global to shared memory, completing on `bar`.
__device__ __forceinline__ void bulk_load(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// The producer's one thread: K and V, then step it (query head it / nq,
// query tile qt0 + it % nq) into stage it % NS once every consumer has
// released the step NS before it.
template <int D, int BM, int BN, int NS>
__device__ __forceinline__ void produce_dkv(const TensorMap* tq, const TensorMap* tdo, const TensorMap* tkv,
                                            const float* delta, const float* lse2, unsigned sK, unsigned sV,
                                            unsigned sQ, unsigned sO, unsigned sLD, unsigned kv_full, unsigned q_full,
                                            unsigned q_empty, AttnDims a, int Tp, int b, int g, int k0, int qt0, int nq,
                                            int niter) {
    const unsigned KBYTES = BN * D * 2, QBYTES = BM * D * 2;
    int group = a.H / a.KV;
    mbar_expect_tx(kv_full, 2 * KBYTES);
#pragma unroll
    for (int pn = 0; pn < D / 64; pn++) {
        tma_load(sK + pn * BN * 128, tkv, (a.H + g) * D + 64 * pn, k0, b, kv_full);
        tma_load(sV + pn * BN * 128, tkv, (a.H + a.KV + g) * D + 64 * pn, k0, b, kv_full);
    }
    for (int it = 0; it < niter; it++) {
        int st = it % NS, h = g * group + it / nq, q0 = (qt0 + it % nq) * BM;
        if (it >= NS) mbar_wait<true>(q_empty + 8 * st, (it / NS - 1) & 1);
        unsigned full = q_full + 8 * st;
        mbar_expect_tx(full, 2 * QBYTES + 2 * BM * 4);
#pragma unroll
        for (int pn = 0; pn < D / 64; pn++) {
            tma_load(sQ + st * QBYTES + pn * BM * 128, tq, h * D + 64 * pn, q0, b, full);
            tma_load(sO + st * QBYTES + pn * BM * 128, tdo, h * D + 64 * pn, q0, b, full);
        }
        i64 lrow = ((i64)b * a.H + h) * Tp + q0;  // padded rows: always BM in bounds
        bulk_load(sLD + st * 2 * BM * 4, lse2 + lrow, BM * 4, full);
        bulk_load(sLD + st * 2 * BM * 4 + BM * 4, delta + lrow, BM * 4, full);
    }
    // Wait until the consumers have released the last step of each stage:
    // a consumer stuck on a barrier then ends in this wait's trap.
    for (int it = max(niter - NS, 0); it < niter; it++) mbar_wait<true>(q_empty + 8 * (it % NS), (it / NS) & 1);
}

template <int D, int BM, int NWG, int CONSUMER_REGS>
__device__ void wgmma_tma_bwd_dkv(bf16* dqkv, const float* delta, const float* lse2, const TensorMap* tq,
                                  const TensorMap* tdo, const TensorMap* tkv, AttnDims a, int Tp) {
    const int BN = 64 * NWG, NS = 2;
    const unsigned KBYTES = BN * D * 2, QBYTES = BM * D * 2;
    extern __shared__ unsigned char smem_raw[];
    unsigned base = smem_u32(smem_raw);
    unsigned sK = (base + 1023u) & ~1023u;
    unsigned sV = sK + KBYTES;
    unsigned sQ = sV + KBYTES;        // NS stages
    unsigned sO = sQ + NS * QBYTES;   // dO, NS stages
    unsigned sLD = sO + NS * QBYTES;  // per stage: lse2[BM], delta[BM]
    // mbarriers: kv_full, then NS each of q_full, q_empty.
    unsigned kv_full = sLD + NS * 2 * BM * 4, q_full = kv_full + 8, q_empty = q_full + 8 * NS;
    const float* fLD = reinterpret_cast<const float*>(smem_raw + (sLD - base));

    int g = blockIdx.x, b = blockIdx.y, kt = blockIdx.z;
    int k0 = kt * BN, group = a.H / a.KV;
    int qt0 = k0 / BM, nq = (a.T - 1) / BM + 1 - qt0, niter = group * nq;
    int wg = threadIdx.x >> 7;  // 0 .. NWG-1 consumers, NWG the producer
    if (threadIdx.x == 0) {
        mbar_init(kv_full, 1);
        for (int st = 0; st < NS; st++) {
            mbar_init(q_full + 8 * st, 1);
            mbar_init(q_empty + 8 * st, 128 * NWG);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (wg == NWG) {
        setmaxnreg_dec<24>();
        if (threadIdx.x == 128 * NWG)
            produce_dkv<D, BM, BN, NS>(tq, tdo, tkv, delta, lse2, sK, sV, sQ, sO, sLD, kv_full, q_full, q_empty, a, Tp, b,
                                       g, k0, qt0, nq, niter);
    } else {
        setmaxnreg_inc<CONSUMER_REGS>();
        int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
        int kw0 = k0 + 64 * wg, key = kw0 + 16 * warp + (lane >> 2);
        const float sl2 = LOG2E / sqrtf((float)D);
        float dk[D / 2], dv[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; i++) dk[i] = dv[i] = 0.0f;
        mbar_wait<false>(kv_full, 0);
        for (int it = 0; it < niter; it++) {
            int st = it % NS, q0 = (qt0 + it % nq) * BM;
            mbar_wait<false>(q_full + 8 * st, (it / NS) & 1);
            const float* ls = fLD + st * 2 * BM;
            dkv_tile<D, BM, BN, true>(dk, dv, sK + wg * 64 * 128, sV + wg * 64 * 128, sQ + st * QBYTES,
                                      sO + st * QBYTES, ls, ls + BM, q0, kw0, key, lane, sl2);
            mbar_arrive(q_empty + 8 * st);  // every read of the stage is done (dkv_tile waits for its wgmmas)
        }
        store_dkv<D>(dqkv, dk, dv, a, b, g, key, lane);
    }
}

// ---------------------------------------------------------------------------
// Warp-specialized dQ (wgmma_tma_bwd_dq): the producer loads the Q and dO
// tiles (BQ rows, barrier q_full), then key tile j's K and V (BK rows) into
// stage j % NS (kv_full / kv_empty, as the forward's k_full / k_empty but K
// and V together: dq_tile reads K again for dQ += dS K). The consumers run
// dq_tile unchanged; every consumer thread releases every tile the block
// loads, also those past its causal range (after seeing them loaded, so the
// arrival lands in that tile's phase), so the count per phase holds.

template <int D, int BQ, int BK, int NS>
__device__ __forceinline__ void produce_dq(const TensorMap* tq, const TensorMap* tdo, const TensorMap* tkv,
                                           unsigned sQ, unsigned sO, unsigned sK, unsigned sV, unsigned q_full,
                                           unsigned kv_full, unsigned kv_empty, AttnDims a, int b, int h, int q0,
                                           int nk) {
    const unsigned QBYTES = BQ * D * 2, KBYTES = BK * D * 2;
    int g = h / (a.H / a.KV);
    mbar_expect_tx(q_full, 2 * QBYTES);
#pragma unroll
    for (int pn = 0; pn < D / 64; pn++) {
        tma_load(sQ + pn * BQ * 128, tq, h * D + 64 * pn, q0, b, q_full);
        tma_load(sO + pn * BQ * 128, tdo, h * D + 64 * pn, q0, b, q_full);
    }
    for (int j = 0; j < nk; j++) {
        int st = j % NS;
        if (j >= NS) mbar_wait<true>(kv_empty + 8 * st, (j / NS - 1) & 1);
        unsigned full = kv_full + 8 * st;
        mbar_expect_tx(full, 2 * KBYTES);
#pragma unroll
        for (int pn = 0; pn < D / 64; pn++) {
            tma_load(sK + st * KBYTES + pn * BK * 128, tkv, (a.H + g) * D + 64 * pn, j * BK, b, full);
            tma_load(sV + st * KBYTES + pn * BK * 128, tkv, (a.H + a.KV + g) * D + 64 * pn, j * BK, b, full);
        }
    }
    for (int j = max(nk - NS, 0); j < nk; j++) mbar_wait<true>(kv_empty + 8 * (j % NS), (j / NS) & 1);
}

template <int D, int BK, int NWG, int CONSUMER_REGS>
__device__ void wgmma_tma_bwd_dq(bf16* dqkv, const float* delta, const float* lse2, const TensorMap* tq,
                                 const TensorMap* tdo, const TensorMap* tkv, AttnDims a, int Tp) {
    const int BQ = 64 * NWG, NS = 2;
    const unsigned QBYTES = BQ * D * 2, KBYTES = BK * D * 2;
    extern __shared__ unsigned char smem_raw[];
    unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned sO = sQ + QBYTES;
    unsigned sK = sO + QBYTES;        // NS stages
    unsigned sV = sK + NS * KBYTES;   // NS stages
    // mbarriers: q_full, then NS each of kv_full, kv_empty.
    unsigned q_full = sV + NS * KBYTES, kv_full = q_full + 8, kv_empty = kv_full + 8 * NS;

    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    int q0 = qt * BQ, nk = (min(a.T, q0 + BQ) - 1) / BK + 1;
    int wg = threadIdx.x >> 7;  // 0 .. NWG-1 consumers, NWG the producer
    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int st = 0; st < NS; st++) {
            mbar_init(kv_full + 8 * st, 1);
            mbar_init(kv_empty + 8 * st, 128 * NWG);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (wg == NWG) {
        setmaxnreg_dec<24>();
        if (threadIdx.x == 128 * NWG)
            produce_dq<D, BQ, BK, NS>(tq, tdo, tkv, sQ, sO, sK, sV, q_full, kv_full, kv_empty, a, b, h, q0, nk);
    } else {
        setmaxnreg_inc<CONSUMER_REGS>();
        int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
        int r0 = q0 + 64 * wg, row = r0 + 16 * warp + (lane >> 2);
        int wnk = r0 < a.T ? min(a.T - 1, r0 + 63) / BK + 1 : 0;
        const float sl2 = LOG2E / sqrtf((float)D);
        i64 lrow = ((i64)b * a.H + h) * Tp + row;  // padded to Tp (a multiple of BQ) rows
        float lr[2] = {lse2[lrow], lse2[lrow + 8]};
        float dr[2] = {delta[lrow], delta[lrow + 8]};
        float dq[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; i++) dq[i] = 0.0f;
        mbar_wait<false>(q_full, 0);
        for (int j = 0; j < nk; j++) {
            int st = j % NS;
            mbar_wait<false>(kv_full + 8 * st, (j / NS) & 1);
            if (j < wnk)
                dq_tile<D, BQ, BK, true>(dq, sQ + wg * 64 * 128, sO + wg * 64 * 128, sK + st * KBYTES,
                                         sV + st * KBYTES, lr, dr, j * BK, r0, row, lane, sl2);
            mbar_arrive(kv_empty + 8 * st);  // dq_tile waits for its wgmmas: the stage is no longer read
        }
        store_dq<D>(dqkv, dq, a, b, h, row, lane);
    }
}

// Tiles (as FlashAttention-3 chooses for its backward): D = 64: 128 queries
// per dK/dV step, 128-key tiles for dQ; D = 128: 64 and 64 (the larger
// accumulators leave registers for half the tile). 2 warpgroups each.
#define WGMMA_BWD_INSTANTIATE(D, BM, BK)                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 1) wgmma_bwd_dkv_d##D(                                         \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2, AttnDims a, int Tp) { \
        wgmma_bwd_dkv<D, BM, 2>(dqkv, dout, qkv, delta, lse2, a, Tp);                                                \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 1) wgmma_bwd_dq_d##D(                                          \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* delta, const float* lse2, AttnDims a, int Tp) { \
        wgmma_bwd_dq<D, BK, 2>(dqkv, dout, qkv, delta, lse2, a, Tp);                                                 \
    }

WGMMA_BWD_INSTANTIATE(64, 128, 128)
WGMMA_BWD_INSTANTIATE(128, 64, 64)

// Warp-specialized: 2 consumer warpgroups + 1 producer; the consumers get
// 240 registers once the producer drops to 24 (as wgmma_tma_fwd_d128).
#define WGMMA_TMA_BWD_INSTANTIATE(D, BM, BK)                                                                       \
    extern "C" __global__ void __launch_bounds__(384, 1) wgmma_tma_bwd_dkv_d##D(                                   \
        bf16* dqkv, const float* delta, const float* lse2, const __grid_constant__ TensorMap tq,                   \
        const __grid_constant__ TensorMap tdo, const __grid_constant__ TensorMap tkv, AttnDims a, int Tp) {        \
        wgmma_tma_bwd_dkv<D, BM, 2, 240>(dqkv, delta, lse2, &tq, &tdo, &tkv, a, Tp);                               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(384, 1) wgmma_tma_bwd_dq_d##D(                                    \
        bf16* dqkv, const float* delta, const float* lse2, const __grid_constant__ TensorMap tq,                   \
        const __grid_constant__ TensorMap tdo, const __grid_constant__ TensorMap tkv, AttnDims a, int Tp) {        \
        wgmma_tma_bwd_dq<D, BK, 2, 240>(dqkv, delta, lse2, &tq, &tdo, &tkv, a, Tp);                                \
    }

WGMMA_TMA_BWD_INSTANTIATE(64, 128, 128)
WGMMA_TMA_BWD_INSTANTIATE(128, 64, 64)
