#!/usr/bin/env python3
"""Emulates, on the CPU, what attention_wgmma.cu asks of the Hopper tensor
cores, to check its shared-memory layout, descriptors and fragment
bookkeeping without a GPU. The GPU tests (tests/cuda_ops.rs) verify the real
kernel; this catches layout slips before a GPU run.

Two halves, written from different sources:
- the kernel's side, transcribed from attention_wgmma.cu: where a 16-byte
  chunk is stored (swz), the descriptor each k16 step gets (smem_desc and its
  arguments), which accumulator register holds which (row, column), P packed
  from S, the tile loop, the causal mask and the online softmax;
- the hardware's side, from the PTX ISA: a descriptor decoded through the
  canonical 128B-swizzle layouts (K-major ((8,m),(T,2k)):((8T,SBO),(1,T)),
  MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)), T = 8 bf16), the
  Swizzle<3,4,3> on byte addresses, and the m64nNk16 fragment layouts.

It runs the forward of one (batch, head) pair for several sequence lengths
and head sizes and compares out and lse with a float64 reference.

    python3 tools/wgmma_layout.py      (needs numpy)
"""
import numpy as np

BK = 128


# ---- hardware side (PTX ISA) ----------------------------------------------
def decode(desc):
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    assert desc >> 62 == 1, "128-byte swizzle expected"
    assert (desc >> 49) & 7 == 0, "base offset expected 0"
    return start, lbo, sbo


def swizzle128(addr):
    return addr ^ (((addr >> 7) & 7) << 4)


def kmajor_addr(desc, mn, k):
    """Byte address of element (mn, k) of a K-major operand."""
    start, _, sbo = decode(desc)
    off = (mn % 8) * 128 + (mn // 8) * sbo + (k % 8) * 2 + (k // 8) * 16
    return swizzle128(start + off)


def mnmajor_addr(desc, mn, k):
    """Byte address of element (mn, k) of an MN-major operand."""
    start, lbo, sbo = decode(desc)
    off = (mn % 8) * 2 + ((mn // 8) % 8) * 16 + (mn // 64) * lbo + (k % 8) * 128 + (k // 8) * sbo
    return swizzle128(start + off)


def read(smem, addr):
    assert addr % 2 == 0
    return smem[addr // 2]


def wgmma_ss(smem, n, da, db):
    """S[64 x n] = A B with A, B K-major in shared memory."""
    a = np.array([[read(smem, kmajor_addr(da, m, k)) for k in range(16)] for m in range(64)])
    b = np.array([[read(smem, kmajor_addr(db, j, k)) for j in range(n)] for k in range(16)])
    return a @ b


def wgmma_rs(smem, n, a, db):
    """A[64 x 16] (from registers) times B[16 x n] MN-major in shared memory."""
    b = np.array([[read(smem, mnmajor_addr(db, j, k)) for j in range(n)] for k in range(16)])
    return a @ b


def acc_rc(t, r):
    """(row, col) of accumulator register r of thread t (0..127)."""
    w, lane = t // 32, t % 32
    i, hf, e = r // 4, (r // 2) % 2, r % 2
    return 16 * w + lane // 4 + 8 * hf, 8 * i + 2 * (lane % 4) + e


def a_frag_rc(t, reg, half):
    """(row, k) of bf16 `half` of A-fragment register reg (0..3) of thread t."""
    w, lane = t // 32, t % 32
    return 16 * w + lane // 4 + 8 * (reg % 2), 2 * (lane % 4) + half + 8 * (reg // 2)


def to_regs(mat):
    """A 64 x n matrix as the 128 threads' accumulator registers."""
    n = mat.shape[1]
    return np.array([[mat[acc_rc(t, r)] for r in range(n // 2)] for t in range(128)])


def from_a_frags(frags):
    """frags[t][reg] = (lo, hi) -> the 64 x 16 A matrix."""
    a = np.full((64, 16), np.nan)
    for t in range(128):
        for reg in range(4):
            for half in range(2):
                a[a_frag_rc(t, reg, half)] = frags[t][reg][half]
    assert not np.isnan(a).any()
    return a


# ---- kernel side (transcribed from attention_wgmma.cu) --------------------
def swz(rows, r, c):
    return (c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4)


def smem_desc(addr, lbo, sbo):
    return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | (1 << 62)


def store_tile(smem, base, rows, src, valid):
    d = src.shape[1]
    for r in range(rows):
        for c in range(d // 8):
            chunk = src[r, 8 * c:8 * c + 8] if r < valid else np.zeros(8)
            a = (base + swz(rows, r, c)) // 2
            smem[a:a + 8] = chunk


def bf16(x):
    """Round to bfloat16 (nearest even), as the GPU does."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def forward(q, k, v, nwg):
    """One (batch, head): q, k, v [T, D]. Returns out [T, D], lse [T]."""
    t_len, d = q.shape
    bq, qbytes, kvbytes = 64 * nwg, 64 * nwg * d * 2, BK * d * 2
    sl2 = np.log2(np.e) / np.sqrt(d)
    out, lse = np.full((t_len, d), np.nan), np.full(t_len, np.nan)
    for qt in range((t_len + bq - 1) // bq):
        smem = np.zeros((qbytes + 4 * kvbytes + 1024) // 2)
        sq = 1024
        sk, sv = sq + qbytes, sq + qbytes + 2 * kvbytes
        q0 = qt * bq
        store_tile(smem, sq, bq, q[q0:q0 + bq], t_len - q0)
        nk = (min(t_len, q0 + bq) - 1) // BK + 1
        for wg in range(nwg):
            r0 = q0 + 64 * wg
            wnk = min(t_len - 1, r0 + 63) // BK + 1 if r0 < t_len else 0
            o = np.zeros((128, d // 2))
            m = np.full((128, 2), -np.inf)
            l_ = np.zeros((128, 2))
            for j in range(nk):
                buf = (j & 1) * kvbytes
                store_tile(smem, sk + buf, BK, k[j * BK:(j + 1) * BK], t_len - j * BK)
                store_tile(smem, sv + buf, BK, v[j * BK:(j + 1) * BK], t_len - j * BK)
                if j >= wnk:
                    continue
                o, m, l_ = attend_tile(smem, o, m, l_, sq + wg * 64 * 128, sk + buf, sv + buf, j * BK, r0, bq, d, sl2)
            for t in range(128):
                for hf in range(2):
                    quad = [4 * (t // 4) + x for x in range(4)]
                    lt = sum(l_[x, hf] for x in quad)
                    row = r0 + 16 * (t // 32) + (t % 32) // 4 + 8 * hf
                    if row >= t_len:
                        continue
                    for r in range(d // 2):
                        if (r // 2) % 2 == hf:
                            out[row, acc_rc(t, r)[1]] = bf16(o[t, r] / lt)
                    lse[row] = (m[t, hf] + np.log2(lt)) * np.log(2)
    return out, lse


def attend_tile(smem, o, m, l_, sqw, skb, svb, k0, r0, bq, d, sl2):
    s_mat = np.zeros((64, BK))
    for kk in range(d // 16):
        dq = smem_desc(sqw + (kk >> 2) * bq * 128 + (kk & 3) * 32, 16, 1024)
        dk = smem_desc(skb + (kk >> 2) * BK * 128 + (kk & 3) * 32, 16, 1024)
        s_mat += wgmma_ss(smem, BK, dq, dk)
    s = to_regs(s_mat)
    diag = k0 + BK - 1 > r0
    o, m, l_ = o.copy(), m.copy(), l_.copy()
    for hf in range(2):
        mx = np.full(128, -np.inf)
        for t in range(128):
            lane = t % 32
            row = r0 + 16 * (t // 32) + lane // 4 + 8 * hf
            for i in range(BK // 8):
                for e in range(2):
                    key = k0 + 8 * i + 2 * (lane & 3) + e
                    val = s[t, 4 * i + 2 * hf + e] * sl2
                    if diag and key > row:
                        val = -np.inf
                    s[t, 4 * i + 2 * hf + e] = val
                    mx[t] = max(mx[t], val)
        mx = mx.reshape(32, 4).max(axis=1).repeat(4)  # quad reduction (xor 1, 2)
        mnew = np.maximum(m[:, hf], mx)
        corr = np.exp2(m[:, hf] - mnew)
        m[:, hf] = mnew
        cols = [4 * i + 2 * hf + e for i in range(BK // 8) for e in range(2)]
        s[:, cols] = np.exp2(s[:, cols] - mnew[:, None])
        l_[:, hf] = l_[:, hf] * corr + s[:, cols].sum(axis=1)
        ocols = [4 * i + 2 * hf + e for i in range(d // 8) for e in range(2)]
        o[:, ocols] *= corr[:, None]
    p = bf16(s)
    for kk in range(BK // 16):
        frags = [[(p[t, 8 * kk + 2 * reg], p[t, 8 * kk + 2 * reg + 1]) for reg in range(4)] for t in range(128)]
        a = from_a_frags(frags)
        dv = smem_desc(svb + kk * 16 * 128, BK * 128, 1024)
        o += to_regs(wgmma_rs(smem, d, a, dv))
    return o, m, l_


def reference(q, k, v):
    t_len, d = q.shape
    s = (q @ k.T) / np.sqrt(d)
    s[np.triu_indices(t_len, 1)] = -np.inf
    mx = s.max(axis=1, keepdims=True)
    p = np.exp(s - mx)
    return (p @ v) / p.sum(axis=1, keepdims=True), (mx[:, 0] + np.log(p.sum(axis=1)))


def main():
    rng = np.random.default_rng(0)
    for d, nwg in [(64, 3), (128, 2)]:
        for t_len in [1, 100, 129, 200, 300]:
            q, k, v = (bf16(rng.standard_normal((t_len, d))) for _ in range(3))
            out, lse = forward(q, k, v, nwg)
            ro, rl = reference(q, k, v)
            eo = np.abs(out - ro).max() / np.abs(ro).max()
            el = np.abs(lse - rl).max()
            print(f"D={d:3} T={t_len:3}: out max err {eo:.2e} (of max |out|), lse max err {el:.2e}")
            assert eo < 2e-2 and el < 1e-4, "emulated kernel disagrees with the reference"
    print("ok: layouts, descriptors and fragments agree with the reference")


if __name__ == "__main__":
    main()
