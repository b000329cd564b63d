// Causal attention forward for Hopper (sm_90a) in the FlashAttention-3
// manner: wgmma tensor-core instructions, S = Q K^T with Q and K read from
// shared memory through matrix descriptors, O += P V with P in registers
// (the S accumulators rounded to bf16) and V read MN-major (transposed) from
// shared memory. Same contract as fa2_fwd in attention_fa2.cu, so the fa2
// backward takes this kernel's output and log-sum-exp unchanged:
//   qkv rows (n = b*T + t) are [q heads (H*D) | k heads (KV*D) | v heads],
//   query head h reads kv head h / (H/KV); out [N, H*D] bf16; lse [B, H, T]
//   is the natural-log log-sum-exp of the scaled scores of each row.
// Needs bf16 qkv / out, 16-byte aligned, D in {64, 128}; compiled for
// compute_90a only (compiler.rs), launched only on a cc 9.0 GPU.
//
// Block = NWG consumer warpgroups x 64 query rows (BQ = 64*NWG); key tiles
// of BK = 128 rows stream through two shared-memory buffers with cp.async
// (16-byte copies, every thread of the block), one tile in flight while the
// other is used. Each warpgroup runs its own online softmax; the two or
// three warpgroups of a block interleave on the SM, so one's softmax hides
// behind another's matrix products. Blocks start longest first (the last
// query tiles of every head come first in launch order).
//
// Shared-memory tiles use the wgmma 128-byte swizzle: a tile of R rows x D
// bf16 is stored as D/64 panels of R rows x 128 bytes; inside each
// 1024-byte atom (8 rows) the 16-byte chunk c of row r sits at chunk
// c ^ (r % 8). Each tile starts on a 1024-byte boundary, so descriptors
// need no base offset. Descriptor strides (PTX ISA, "Shared Memory Matrix
// Layout", canonical layouts with 128B swizzle, bf16):
//   K-major (Q as A, K as B; imm-trans 0): SBO = 1024 (the next 8 rows);
//     LBO unused; the k16 step kk starts at panel kk/4, byte (kk%4)*32.
//   MN-major (V as B, imm-trans-b 1): SBO = 1024 (the next 8 keys, the K
//     direction), LBO = R*128 (the next 64 columns of d, the next panel);
//     the k16 step kk (16 keys) starts 16*128 bytes further.
// tools/wgmma_layout.py emulates these layouts and fragments on the CPU.
//
// Register fragments (PTX ISA, wgmma .m64nNk16): warp w of the warpgroup
// holds rows 16w .. 16w+15; accumulator element d[4*i + 2*hf + e] is row
// 16w + lane/4 + 8*hf, column 8*i + 2*(lane%4) + e. The bf16 A fragment of
// k16 step kk is the same layout at half the width, so P's A fragment is
// the S accumulators of columns 16kk .. 16kk+15 packed in pairs, as for
// mma.sync in attention_fa2.cu.
//
// The helpers (copies, fences, descriptors, wgmma wrappers, pack_p) are in
// wgmma_common.cuh, compiled in front of this file.

// The three steps of one key tile for one warpgroup. `row` is this
// thread's first query row (its second is row + 8); sQw is the warpgroup's
// 64 query rows; s holds S (then P, in place) as accumulators.

// Issues S = Q K^T (wgmma, both operands from shared memory) as one
// wgmma group; the caller waits for it and then pins s.
template <int D, int BQ, int BK>
__device__ __forceinline__ void issue_qk(float* s, unsigned sQw, unsigned sKb) {
    u64 q0 = smem_desc(sQw, 16, 1024), k0 = smem_desc(sKb, 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        u64 dq = desc_plus(q0, (kk >> 2) * BQ * 128 + (kk & 3) * 32);
        u64 dk = desc_plus(k0, (kk >> 2) * BK * 128 + (kk & 3) * 32);
        wgmma_m64n128k16_ss(s, dq, dk, kk);
    }
    wgmma_commit();
}

// Online softmax of one tile in registers: the causal mask (only on tiles
// that reach past the warpgroup's first row r0), new row maxima m (kept in
// the scaled log2 domain), s = exp2(s * sl2 - m) in place (one FFMA and one
// MUFU per score: the maxima are taken on the unscaled scores, as the scale
// is positive), row sums l (per thread; the quad is reduced at the end).
// corr[hf] is the factor O must be scaled by.
template <int BK>
__device__ __forceinline__ void softmax_tile(float* s, float* m, float* l, float* corr, int k0, int r0, int row,
                                             int lane, float sl2) {
    bool diag = k0 + BK - 1 > r0;  // warpgroup-uniform
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        int r = row + 8 * hf;
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < BK / 8; i++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int key = k0 + 8 * i + 2 * (lane & 3) + e;
                if (diag && key > r) s[4 * i + 2 * hf + e] = -INFINITY;
                mx = fmaxf(mx, s[4 * i + 2 * hf + e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Key tile 0 (processed first) holds key 0 <= r, so m is finite
        // from then on and exp2(-inf * sl2 - m) is a clean 0.
        float mnew = fmaxf(m[hf], mx * sl2);
        corr[hf] = fast_exp2(m[hf] - mnew);
        m[hf] = mnew;
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < BK / 8; i++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float p = fast_exp2(fmaf(s[4 * i + 2 * hf + e], sl2, -mnew));
                s[4 * i + 2 * hf + e] = p;
                sum += p;
            }
        l[hf] = l[hf] * corr[hf] + sum;
    }
}

// O *= corr, row by row.
template <int D>
__device__ __forceinline__ void rescale(float* o, const float* corr) {
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
        o[4 * i] *= corr[0];
        o[4 * i + 1] *= corr[0];
        o[4 * i + 2] *= corr[1];
        o[4 * i + 3] *= corr[1];
    }
}

// Issues O += P V (wgmma, P from registers, V MN-major from shared memory)
// as one wgmma group; the caller waits for it and then pins o and p.
template <int D, int BK>
__device__ __forceinline__ void issue_pv(float* o, unsigned (*p)[4], unsigned sVb) {
    u64 v0 = smem_desc(sVb, BK * 128, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
        u64 dv = desc_plus(v0, kk * 16 * 128);
        if constexpr (D == 64) {
            wgmma_m64n64k16_rs(o, p[kk], dv);
        } else {
            wgmma_m64n128k16_rs(o, p[kk], dv);
        }
    }
    wgmma_commit();
}

// One key tile, each step waited for: S, softmax, O = O * corr + P V.
template <int D, int BQ, int BK>
__device__ __forceinline__ void attend_tile(float* o, float* m, float* l, unsigned sQw, unsigned sKb, unsigned sVb,
                                            int k0, int r0, int row, int lane, float sl2) {
    float s[BK / 2], corr[2];
    unsigned p[BK / 16][4];
    issue_qk<D, BQ, BK>(s, sQw, sKb);
    wgmma_wait<0>();
    pin<BK / 2>(s);
    softmax_tile<BK>(s, m, l, corr, k0, r0, row, lane, sl2);
    rescale<D>(o, corr);
    pack_p<BK>(p, s);
    issue_pv<D, BK>(o, p, sVb);
    wgmma_wait<0>();
    pin<D / 2>(o);
    pin<BK / 4>(&p[0][0]);
}

// Normalizes O by the row sums and stores it (bf16) and the natural-log
// log-sum-exp, for rows < T.
template <int D>
__device__ __forceinline__ void store_rows(bf16* out, void* lse, int dtl, const float* o, const float* m,
                                           const float* l, AttnDims a, int b, int h, int row, int lane) {
    i64 rb = (i64)b * a.T;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float lt = l[hf];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        int r = row + 8 * hf;
        if (r >= a.T) continue;
        float inv = 1.0f / lt;
        bf16* orow = out + (rb + r) * (i64)a.H * D + (i64)h * D + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < D / 8; i++)
            *reinterpret_cast<unsigned*>(orow + 8 * i) = pack_bf16(o[4 * i + 2 * hf] * inv, o[4 * i + 2 * hf + 1] * inv);
        if ((lane & 3) == 0) st(lse, dtl, ((i64)b * a.H + h) * a.T + r, (m[hf] + log2f(lt)) * LN2);
    }
}

template <int D, int NWG>
__device__ void wgmma_fwd(bf16* out, void* lse, int dtl, const bf16* qkv, AttnDims a) {
    const int BQ = 64 * NWG, BK = 128, NT = 128 * NWG;
    const unsigned QBYTES = BQ * D * 2, KVBYTES = BK * D * 2;
    extern __shared__ unsigned char smem_raw[];
    // 1024-byte aligned tiles (the swizzle atom); the host adds 1024 bytes of slack.
    unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned sK = sQ + QBYTES;        // 2 buffers
    unsigned sV = sK + 2 * KVBYTES;   // 2 buffers

    // Longest first: blockIdx.z counts query tiles down from the last.
    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    int q0 = qt * BQ, g = h / (a.H / a.KV);
    i64 W = (i64)(a.H + 2 * a.KV) * D, rb = (i64)b * a.T;
    const bf16* kbase = qkv + rb * W + (i64)(a.H + g) * D;
    const bf16* vbase = qkv + rb * W + (i64)(a.H + a.KV + g) * D;
    int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int r0 = q0 + 64 * wg;                        // the warpgroup's first query row
    int row = r0 + 16 * warp + (lane >> 2);       // this thread's first row
    int nk = (min(a.T, q0 + BQ) - 1) / BK + 1;    // key tiles the block loads
    int wnk = r0 < a.T ? min(a.T - 1, r0 + 63) / BK + 1 : 0;  // ... the warpgroup uses
    const float sl2 = LOG2E / sqrtf((float)D);

    tile_async<BQ, D, NT>(sQ, qkv + (rb + q0) * W + (i64)h * D, W, a.T - q0);
    auto issue_kv = [&](int j) {
        unsigned buf = (j & 1) * KVBYTES;
        tile_async<BK, D, NT>(sK + buf, kbase + (i64)j * BK * W, W, a.T - j * BK);
        tile_async<BK, D, NT>(sV + buf, vbase + (i64)j * BK * W, W, a.T - j * BK);
    };
    issue_kv(0);
    cp_async_commit();

    float o[D / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;

    for (int j = 0; j < nk; j++) {
        // Start tile j + 1 into the other buffer (freed by the barrier that
        // ended iteration j - 1), then wait for tile j (and Q).
        if (j + 1 < nk) {
            issue_kv(j + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
        __syncthreads();
        if (j < wnk) {
            unsigned buf = (j & 1) * KVBYTES;
            attend_tile<D, BQ, BK>(o, m, l, sQ + wg * 64 * 128, sK + buf, sV + buf, j * BK, r0, row, lane, sl2);
        }
        __syncthreads();  // every warpgroup is done with buffer j & 1
    }

    store_rows<D>(out, lse, dtl, o, m, l, a, b, h, row, lane);
}

// ---------------------------------------------------------------------------
// Warp-specialized variant (wgmma_tma_fwd), FlashAttention-3's structure:
// one producer warpgroup (its first thread issues every load) and NWG
// consumer warpgroups, no block-wide barrier after the start.
// - Loads: cp.async.bulk.tensor (TMA) with tensor maps built on the host
//   (attention.rs: 3-D [B][T][row width] bf16, 64-column boxes, 128-byte
//   swizzle, the layout described at the top); rows past T lie outside the
//   map and arrive as zeros. Each load completes on an mbarrier that counts
//   its bytes (complete_tx).
// - Barriers (mbarrier, in shared memory): q_full; per stage k_full and
//   v_full (count 1: the producer's arrive.expect_tx, then the bytes) and
//   k_empty and v_empty (count = every consumer thread). Stage st holds
//   key tiles st, st + NS, ...; tile j is phase j / NS of its stage's
//   barriers. K and V stages are released separately (K_j once S_j is
//   done, V_j once P_j V_j is), so K_{j+2} loads while tile j+1 is used.
// - Every consumer warpgroup arrives on k_empty and v_empty for every tile
//   the block loads, also for tiles past its causal range (after seeing
//   them loaded, so the arrival lands in that tile's phase), so the count
//   per phase holds.
// - Registers: setmaxnreg gives the producer 24 and the consumers the rest.
// - Inside a consumer warpgroup, softmax of tile j overlaps the P V product
//   of tile j - 1 (issued S_j, then PV_{j-1}; wait for S_j only; softmax;
//   wait for PV_{j-1}; then rescale O and pack P_j).
// tools/wgmma_pipeline.py model-checks this barrier protocol on the CPU.

// (TensorMap, the mbarrier, TMA and setmaxnreg helpers: wgmma_common.cuh.)

// The producer's one thread: Q, then key/value tile j into stage j % NS
// once every consumer has released the tile NS before it.
template <int D, int BQ, int BK, int NS>
__device__ __forceinline__ void produce(const TensorMap* tq, const TensorMap* tkv, unsigned sQ, unsigned sK, unsigned sV,
                                        unsigned q_full, unsigned k_full, unsigned v_full, unsigned k_empty,
                                        unsigned v_empty, AttnDims a, int b, int h, int q0, int nk) {
    const unsigned KVBYTES = BK * D * 2;
    int g = h / (a.H / a.KV);
    int qcol = h * D, kcol = (a.H + g) * D, vcol = (a.H + a.KV + g) * D;
    mbar_expect_tx(q_full, BQ * D * 2);
#pragma unroll
    for (int pn = 0; pn < D / 64; pn++) tma_load(sQ + pn * BQ * 128, tq, qcol + 64 * pn, q0, b, q_full);
    for (int j = 0; j < nk; j++) {
        int st = j % NS;
        unsigned kdst = sK + st * KVBYTES, vdst = sV + st * KVBYTES;
        if (j >= NS) mbar_wait<true>(k_empty + 8 * st, (j / NS - 1) & 1);
        mbar_expect_tx(k_full + 8 * st, KVBYTES);
#pragma unroll
        for (int pn = 0; pn < D / 64; pn++) tma_load(kdst + pn * BK * 128, tkv, kcol + 64 * pn, j * BK, b, k_full + 8 * st);
        if (j >= NS) mbar_wait<true>(v_empty + 8 * st, (j / NS - 1) & 1);
        mbar_expect_tx(v_full + 8 * st, KVBYTES);
#pragma unroll
        for (int pn = 0; pn < D / 64; pn++) tma_load(vdst + pn * BK * 128, tkv, vcol + 64 * pn, j * BK, b, v_full + 8 * st);
    }
    // Wait until the consumers have released the last tile of each stage:
    // a consumer stuck on a barrier then ends in this wait's trap.
    for (int j = max(nk - NS, 0); j < nk; j++) {
        mbar_wait<true>(k_empty + 8 * (j % NS), (j / NS) & 1);
        mbar_wait<true>(v_empty + 8 * (j % NS), (j / NS) & 1);
    }
}

// Ping-pong (FlashAttention-3's inter-warpgroup schedule, the PP variant):
// the consumer warpgroups take turns issuing their matrix products, round
// robin, so one warpgroup's softmax runs while the next one's products
// occupy the tensor cores, instead of all of them issuing at once and then
// all computing exps at once. Named barrier 1 + w is warpgroup w's turn:
// it waits there (bar.sync, 256 threads: its own 128 and the previous
// warpgroup's bar.arrive) before issuing, and arrives on the next one's
// after. Every warpgroup takes exactly nk turns (the block's key tiles, also
// those past its causal range, where it issues nothing), so the counts
// match; warpgroup 0 does not wait on its first turn and the last one does
// not arrive after its last (nobody would wait for it). Barrier 0 is
// __syncthreads.
__device__ __forceinline__ void turn_wait(int wg, int j) {
    if (wg == 0 && j == 0) return;
    asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory");
}
template <int NWG>
__device__ __forceinline__ void turn_pass(int wg, int j, int nk) {
    if (wg == NWG - 1 && j == nk - 1) return;
    asm volatile("bar.arrive %0, 256;\n" ::"r"(1 + (wg + 1) % NWG) : "memory");
}

// One consumer warpgroup: its 64 query rows against key tiles 0 .. wnk-1,
// softmax of tile j overlapping P V of tile j - 1; then the rows stored.
// PP: the turns above, one per key tile of the block (NWG consumers).
template <int D, int BQ, int BK, int NS, bool PP, int NWG>
__device__ __forceinline__ void consume(bf16* out, void* lse, int dtl, unsigned sQw, unsigned sK, unsigned sV,
                                        unsigned q_full, unsigned k_full, unsigned v_full, unsigned k_empty,
                                        unsigned v_empty, AttnDims a, int b, int h, int r0, int nk, int wg) {
    const unsigned KVBYTES = BK * D * 2;
    int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int row = r0 + 16 * warp + (lane >> 2);
    int wnk = r0 < a.T ? min(a.T - 1, r0 + 63) / BK + 1 : 0;
    const float sl2 = LOG2E / sqrtf((float)D);
    float o[D / 2], s[BK / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, corr[2];
    unsigned p[BK / 16][4];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;

    mbar_wait<false>(q_full, 0);
    if (wnk > 0) {  // tile 0: O is still 0, nothing to rescale
        mbar_wait<false>(k_full, 0);
        if (PP) turn_wait(wg, 0);
        issue_qk<D, BQ, BK>(s, sQw, sK);
        if (PP) turn_pass<NWG>(wg, 0, nk);
        wgmma_wait<0>();
        pin<BK / 2>(s);
        mbar_arrive(k_empty);  // K_0 is no longer read
        softmax_tile<BK>(s, m, l, corr, 0, r0, row, lane, sl2);
        pack_p<BK>(p, s);
    }
    for (int j = 1; j < wnk; j++) {
        int st = j % NS, pst = (j - 1) % NS;
        mbar_wait<false>(k_full + 8 * st, (j / NS) & 1);
        mbar_wait<false>(v_full + 8 * pst, ((j - 1) / NS) & 1);
        if (PP) turn_wait(wg, j);
        issue_qk<D, BQ, BK>(s, sQw, sK + st * KVBYTES);
        issue_pv<D, BK>(o, p, sV + pst * KVBYTES);
        if (PP) turn_pass<NWG>(wg, j, nk);
        wgmma_wait<1>();  // S_j is done; PV_{j-1} may still run
        pin<BK / 2>(s);
        mbar_arrive(k_empty + 8 * st);  // K_j is no longer read
        softmax_tile<BK>(s, m, l, corr, j * BK, r0, row, lane, sl2);
        wgmma_wait<0>();
        pin<D / 2>(o);
        pin<BK / 4>(&p[0][0]);
        mbar_arrive(v_empty + 8 * pst);  // V_{j-1} is no longer read
        rescale<D>(o, corr);
        pack_p<BK>(p, s);
    }
    if (wnk > 0) {
        int pst = (wnk - 1) % NS;
        mbar_wait<false>(v_full + 8 * pst, ((wnk - 1) / NS) & 1);
        issue_pv<D, BK>(o, p, sV + pst * KVBYTES);
        wgmma_wait<0>();
        pin<D / 2>(o);
        pin<BK / 4>(&p[0][0]);
        mbar_arrive(v_empty + 8 * pst);
    }
    // Tiles past this warpgroup's rows: their turns (nothing to issue), and
    // released once loaded (see above).
    for (int j = wnk; j < nk; j++) {
        if (PP) {
            turn_wait(wg, j);
            turn_pass<NWG>(wg, j, nk);
        }
        mbar_wait<false>(k_full + 8 * (j % NS), (j / NS) & 1);
        mbar_arrive(k_empty + 8 * (j % NS));
        mbar_wait<false>(v_full + 8 * (j % NS), (j / NS) & 1);
        mbar_arrive(v_empty + 8 * (j % NS));
    }
    store_rows<D>(out, lse, dtl, o, m, l, a, b, h, row, lane);
}

template <int D, int NWG, int CONSUMER_REGS, bool PP>
__device__ void wgmma_tma_fwd(bf16* out, void* lse, int dtl, const TensorMap* tq, const TensorMap* tkv, AttnDims a) {
    const int BQ = 64 * NWG, BK = 128, NS = 2;
    const unsigned QBYTES = BQ * D * 2, KVBYTES = BK * D * 2;
    extern __shared__ unsigned char smem_raw[];
    unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned sK = sQ + QBYTES;       // NS stages
    unsigned sV = sK + NS * KVBYTES;  // NS stages
    // mbarriers: q_full, then NS each of k_full, v_full, k_empty, v_empty.
    unsigned q_full = sV + NS * KVBYTES, k_full = q_full + 8, v_full = k_full + 8 * NS;
    unsigned k_empty = v_full + 8 * NS, v_empty = k_empty + 8 * NS;

    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z;
    int q0 = qt * BQ, nk = (min(a.T, q0 + BQ) - 1) / BK + 1;
    int wg = threadIdx.x >> 7;  // 0 .. NWG-1 consumers, NWG the producer
    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int st = 0; st < NS; st++) {
            mbar_init(k_full + 8 * st, 1);
            mbar_init(v_full + 8 * st, 1);
            mbar_init(k_empty + 8 * st, 128 * NWG);
            mbar_init(v_empty + 8 * st, 128 * NWG);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (wg == NWG) {
        setmaxnreg_dec<24>();
        if (threadIdx.x == 128 * NWG) produce<D, BQ, BK, NS>(tq, tkv, sQ, sK, sV, q_full, k_full, v_full, k_empty, v_empty, a, b, h, q0, nk);
    } else {
        setmaxnreg_inc<CONSUMER_REGS>();
        consume<D, BQ, BK, NS, PP, NWG>(out, lse, dtl, sQ + wg * 64 * 128, sK, sV, q_full, k_full, v_full, k_empty,
                                        v_empty, a, b, h, q0 + 64 * wg, nk, wg);
    }
}

// D = 64: 3 warpgroups (192 query rows, 88 KiB of shared memory);
// D = 128: 2 warpgroups (128 rows, 160 KiB), as FlashAttention-3 chooses.
#define WGMMA_INSTANTIATE(D, NWG)                                                        \
    extern "C" __global__ void __launch_bounds__(128 * NWG, 1)                           \
        wgmma_fwd_d##D(bf16* out, void* lse, int dtl, const bf16* qkv, AttnDims a) {      \
        wgmma_fwd<D, NWG>(out, lse, dtl, qkv, a);                                        \
    }

WGMMA_INSTANTIATE(64, 3)
WGMMA_INSTANTIATE(128, 2)

// Warp-specialized: NWG consumer warpgroups + 1 producer; the consumers'
// register count fills the register file once the producer drops to 24:
// (65536 / threads rounded down to 8, at entry) -> 240 for D = 128 (384
// threads), 160 for D = 64 (512 threads).
// The _pp kernels: the same with the consumers' ping-pong turns.
#define WGMMA_TMA_INSTANTIATE(D, NWG, REGS)                                                                       \
    extern "C" __global__ void __launch_bounds__(128 * (NWG + 1), 1)                                               \
        wgmma_tma_fwd_d##D(bf16* out, void* lse, int dtl, const __grid_constant__ TensorMap tq,                    \
                           const __grid_constant__ TensorMap tkv, AttnDims a) {                                     \
        wgmma_tma_fwd<D, NWG, REGS, false>(out, lse, dtl, &tq, &tkv, a);                                           \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(128 * (NWG + 1), 1)                                               \
        wgmma_tma_fwd_pp_d##D(bf16* out, void* lse, int dtl, const __grid_constant__ TensorMap tq,                 \
                              const __grid_constant__ TensorMap tkv, AttnDims a) {                                  \
        wgmma_tma_fwd<D, NWG, REGS, true>(out, lse, dtl, &tq, &tkv, a);                                            \
    }

WGMMA_TMA_INSTANTIATE(64, 3, 160)
WGMMA_TMA_INSTANTIATE(128, 2, 240)
