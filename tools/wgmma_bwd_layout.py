#!/usr/bin/env python3
"""Emulates, on the CPU, what attention_wgmma_bwd.cu asks of the Hopper
tensor cores, to check its shared-memory layout, descriptors, fragment
bookkeeping, masks and loops without a GPU (as tools/wgmma_layout.py does for
the forward, whose hardware side this reuses: descriptors decoded through the
PTX ISA's canonical 128B-swizzle layouts, the m64nNk16 fragment layouts).

The kernel side is transcribed from attention_wgmma_bwd.cu: the tile
offsets of each kernel, the descriptor each k16 step gets (issue_abt,
issue_rs), which accumulator register holds which (key, query) or (query,
key), the lse2 / delta staging of wgmma_bwd_dkv, the causal mask, dS, the
bf16 packing of P^T, dS^T and dS into A fragments, the loops over query
heads and tiles, and the stores. Each kernel runs for one (batch, kv head)
with a group of 2 query heads and is compared with a float64 backward.
The warp-specialized dK/dV kernel (wgmma_tma_bwd_dkv) runs the same
dkv_tile on the same stage layout (TMA writes the swizzled tiles store_tile
writes here; lse2 / delta land as [lse2 | delta] per stage), so this covers
its arithmetic but not its barriers.

    python3 tools/wgmma_bwd_layout.py      (needs numpy; ~1 minute)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wgmma_layout import acc_rc, bf16, from_a_frags, smem_desc, store_tile, to_regs, wgmma_rs, wgmma_ss  # noqa: E402

NWG = 2
BN = 64 * NWG  # keys per dK/dV block
BQ = 64 * NWG  # queries per dQ block
LOG2E = np.log2(np.e)


def tiles(d):
    """(BM, BK) of WGMMA_BWD_INSTANTIATE: queries per dK/dV step, keys per dQ step."""
    return (128, 128) if d == 64 else (64, 64)


def issue_abt(smem, d, arows, n, s_a, s_b):
    """c[64 x n] = A B^T over K = d, both K-major (issue_abt)."""
    c = np.zeros((64, n))
    for kk in range(d // 16):
        da = smem_desc(s_a + (kk >> 2) * arows * 128 + (kk & 3) * 32, 16, 1024)
        db = smem_desc(s_b + (kk >> 2) * n * 128 + (kk & 3) * 32, 16, 1024)
        c += wgmma_ss(smem, n, da, db)
    return to_regs(c)


def pack(regs, kk):
    """pack_p: A fragment kk of k16 step kk from accumulator registers (bf16 pairs)."""
    r = bf16(regs)
    return [[(r[t, 8 * kk + 2 * reg], r[t, 8 * kk + 2 * reg + 1]) for reg in range(4)] for t in range(128)]


def issue_rs(smem, d, kr, regs, s_b):
    """c[64 x d] = A B, A from the packed registers (kr/16 steps), B kr rows MN-major (issue_rs)."""
    c = np.zeros((64, d))
    for kk in range(kr // 16):
        c += wgmma_rs(smem, d, from_a_frags(pack(regs, kk)), smem_desc(s_b + kk * 16 * 128, kr * 128, 1024))
    return to_regs(c)


def dkv_kernel(q, do, k, v, lse2, delta, t_len, d):
    """wgmma_bwd_dkv for one (batch, kv head): q, do [group][T][d]; k, v [T][d];
    lse2, delta [group][Tp]. Returns dk, dv [T][d] (bf16 values)."""
    bm, _ = tiles(d)
    group = len(q)
    kbytes, qbytes = BN * d * 2, bm * d * 2
    sl2 = LOG2E / np.sqrt(d)
    dk_out, dv_out = np.full((t_len, d), np.nan), np.full((t_len, d), np.nan)
    for kt in range((t_len + BN - 1) // BN):
        smem = np.zeros((2 * kbytes + 4 * qbytes + 1024) // 2)
        s_k = 1024
        s_v = s_k + kbytes
        s_q = s_v + kbytes
        s_o = s_q + 2 * qbytes
        ld = np.full(4 * bm, np.nan)  # the lse2 / delta buffers (sLD), in floats
        k0 = kt * BN
        store_tile(smem, s_k, BN, k[k0:k0 + BN], t_len - k0)
        store_tile(smem, s_v, BN, v[k0:k0 + BN], t_len - k0)
        qt0 = k0 // bm
        nq = (t_len - 1) // bm + 1 - qt0
        dk = np.zeros((NWG, 128, d // 2))
        dv = np.zeros((NWG, 128, d // 2))
        for it in range(group * nq):
            h, q0, buf = it // nq, (qt0 + it % nq) * bm, it & 1
            store_tile(smem, s_q + buf * qbytes, bm, q[h][q0:q0 + bm], t_len - q0)
            store_tile(smem, s_o + buf * qbytes, bm, do[h][q0:q0 + bm], t_len - q0)
            for tid in range(bm // 2):  # the cp.async of lse2 / delta
                is_l, c = tid < bm // 4, tid % (bm // 4)
                src = (lse2 if is_l else delta)[h][q0 + 4 * c:q0 + 4 * c + 4]
                assert len(src) == 4, "lse2 / delta read past the padding"
                at = buf * 2 * bm + (0 if is_l else bm) + 4 * c
                ld[at:at + 4] = src
            ls, ds = ld[buf * 2 * bm:buf * 2 * bm + bm], ld[buf * 2 * bm + bm:buf * 2 * bm + 2 * bm]
            for wg in range(NWG):
                kw0 = k0 + 64 * wg
                sqb, sob = s_q + buf * qbytes, s_o + buf * qbytes
                st = issue_abt(smem, d, BN, bm, s_k + wg * 64 * 128, sqb)
                dpt = issue_abt(smem, d, BN, bm, s_v + wg * 64 * 128, sob)
                diag = q0 < kw0 + 63
                for t in range(128):
                    warp, lane = t // 32, t % 32
                    key = kw0 + 16 * warp + (lane >> 2)
                    for x in range(bm // 2):
                        i, hf, e = x // 4, (x // 2) % 2, x % 2
                        qc = 8 * i + 2 * (lane & 3)
                        p = np.exp2(st[t, x] * sl2 - ls[qc + e])
                        if diag and key + 8 * hf > q0 + qc + e:
                            p = 0.0
                        st[t, x] = p
                        dpt[t, x] = p * (dpt[t, x] - ds[qc + e])
                dv[wg] += issue_rs(smem, d, bm, st, sob)
                dk[wg] += issue_rs(smem, d, bm, dpt, sqb)
        scale = 1.0 / np.sqrt(d)
        for wg in range(NWG):
            for t in range(128):
                warp, lane = t // 32, t % 32
                for hf in range(2):
                    key = k0 + 64 * wg + 16 * warp + (lane >> 2) + 8 * hf
                    if key >= t_len:
                        continue
                    for i in range(d // 8):
                        for e in range(2):
                            col = 8 * i + 2 * (lane & 3) + e
                            dk_out[key, col] = bf16(dk[wg, t, 4 * i + 2 * hf + e] * scale)
                            dv_out[key, col] = bf16(dv[wg, t, 4 * i + 2 * hf + e])
    return dk_out, dv_out


def dq_kernel(q, do, k, v, lse2, delta, t_len, d):
    """wgmma_bwd_dq for one (batch, head): q, do, k, v [T][d]; lse2, delta [Tp]."""
    _, bk = tiles(d)
    qbytes, kbytes = BQ * d * 2, bk * d * 2
    sl2 = LOG2E / np.sqrt(d)
    dq_out = np.full((t_len, d), np.nan)
    for qt in range((t_len + BQ - 1) // BQ):
        smem = np.zeros((2 * qbytes + 4 * kbytes + 1024) // 2)
        s_q = 1024
        s_o = s_q + qbytes
        s_k = s_o + qbytes
        s_v = s_k + 2 * kbytes
        q0 = qt * BQ
        store_tile(smem, s_q, BQ, q[q0:q0 + BQ], t_len - q0)
        store_tile(smem, s_o, BQ, do[q0:q0 + BQ], t_len - q0)
        nk = (min(t_len, q0 + BQ) - 1) // bk + 1
        dq = np.zeros((NWG, 128, d // 2))
        for j in range(nk):
            buf = (j & 1) * kbytes
            store_tile(smem, s_k + buf, bk, k[j * bk:(j + 1) * bk], t_len - j * bk)
            store_tile(smem, s_v + buf, bk, v[j * bk:(j + 1) * bk], t_len - j * bk)
            for wg in range(NWG):
                r0 = q0 + 64 * wg
                wnk = min(t_len - 1, r0 + 63) // bk + 1 if r0 < t_len else 0
                if j >= wnk:
                    continue
                k0 = j * bk
                s = issue_abt(smem, d, BQ, bk, s_q + wg * 64 * 128, s_k + buf)
                dp = issue_abt(smem, d, BQ, bk, s_o + wg * 64 * 128, s_v + buf)
                diag = k0 + bk - 1 > r0
                for t in range(128):
                    warp, lane = t // 32, t % 32
                    row = r0 + 16 * warp + (lane >> 2)
                    lr, dr = [lse2[row], lse2[row + 8]], [delta[row], delta[row + 8]]
                    for x in range(bk // 2):
                        i, hf, e = x // 4, (x // 2) % 2, x % 2
                        p = np.exp2(s[t, x] * sl2 - lr[hf])
                        if diag and k0 + 8 * i + 2 * (lane & 3) + e > row + 8 * hf:
                            p = 0.0
                        dp[t, x] = p * (dp[t, x] - dr[hf])
                dq[wg] += issue_rs(smem, d, bk, dp, s_k + buf)
        scale = 1.0 / np.sqrt(d)
        for wg in range(NWG):
            for t in range(128):
                for x in range(d // 2):
                    r, col = acc_rc(t, x)
                    row = q0 + 64 * wg + r
                    if row < t_len:
                        dq_out[row, col] = bf16(dq[wg, t, x] * scale)
    return dq_out


def reference(q, k, v, do):
    """float64 causal attention backward of one head: (dq, dk, dv, out, lse)."""
    t_len, d = q.shape
    s = (q @ k.T) / np.sqrt(d)
    s[np.triu_indices(t_len, 1)] = -np.inf
    mx = s.max(axis=1, keepdims=True)
    e = np.exp(s - mx)
    p = e / e.sum(axis=1, keepdims=True)
    out = p @ v
    dp = do @ v.T
    ds = p * (dp - (do * out).sum(axis=1, keepdims=True))
    lse = mx[:, 0] + np.log(e.sum(axis=1))
    return ds @ k / np.sqrt(d), ds.T @ q / np.sqrt(d), p.T @ do, out, lse


def check(name, got, want):
    assert not np.isnan(got).any(), f"{name}: elements never written"
    # At T = 1, dq and dk are exactly 0 (dS = P (dP - delta) with dP = delta).
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-3)
    print(f"    {name} max err {err:.2e} (of max |{name}|)")
    assert err < 3e-2, f"{name}: emulated kernel disagrees with the reference"


def main():
    rng = np.random.default_rng(0)
    group = 2
    for d in [64, 128]:
        for t_len in [1, 100, 129, 200, 300]:
            tp = (t_len + 127) // 128 * 128  # attention.rs pads delta / lse2 to 128 rows
            k, v = (bf16(rng.standard_normal((t_len, d))) for _ in range(2))
            q = [bf16(rng.standard_normal((t_len, d))) for _ in range(group)]
            do = [bf16(rng.standard_normal((t_len, d))) for _ in range(group)]
            refs = [reference(q[h], k, v, do[h]) for h in range(group)]
            lse2 = [np.concatenate([r[4] * LOG2E, np.full(tp - t_len, np.inf)]) for r in refs]
            delta = [np.concatenate([(do[h] * bf16(refs[h][3])).sum(axis=1), np.zeros(tp - t_len)]) for h in range(group)]
            print(f"D={d:3} T={t_len:3} (2 query heads per kv head):")
            dk, dv = dkv_kernel(q, do, k, v, lse2, delta, t_len, d)
            check("dk", dk, sum(r[1] for r in refs))
            check("dv", dv, sum(r[2] for r in refs))
            for h in range(group):
                check(f"dq{h}", dq_kernel(q[h], do[h], k, v, lse2[h], delta[h], t_len, d), refs[h][0])
    print("ok: the backward's layouts, descriptors and fragments agree with the reference")


if __name__ == "__main__":
    main()
