#!/usr/bin/env python3
"""Emulates the roundings of the tensor-core attention forwards (P rounded
to bf16 against the running row maximum of each key tile, fp32 sums taken
as exact, the output rounded to bf16) on random N(0,1) bf16 inputs of one
head, causal, against a float64 reference, and prints the worst element's
ratio to ATTN_FWD's bound (tests/cuda_ops.rs: rtol 2U, atol 6U x RMS) with
the RMS of the whole output and with each row's own RMS
(`assert_close_rows`). Key tiles of 128 (wgmma kernels) and 64 (fa2).

    python3 tools/attn_fwd_tolerance.py [T ...]      (default 600 4096; needs numpy)
"""
import sys

import numpy as np

U = 2.0 ** -8


def bf16(x):
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def emulate(q, k, v, tile):
    t_len, d = q.shape
    s = (q @ k.T) / np.sqrt(d)
    s[np.triu_indices(t_len, 1)] = -np.inf
    m, l, o = np.full((t_len, 1), -np.inf), np.zeros((t_len, 1)), np.zeros((t_len, d))
    for k0 in range(0, t_len, tile):
        sj = s[:, k0:k0 + tile]
        mnew = np.maximum(m, sj.max(1, keepdims=True))
        mfin = np.where(np.isinf(mnew), 0.0, mnew)
        corr = np.where(np.isinf(m), 0.0, np.exp(m - mfin))
        p = np.exp(sj - mfin)
        l = l * corr + p.sum(1, keepdims=True)
        o = o * corr + bf16(p) @ v[k0:k0 + tile]
        m = mnew
    mx = s.max(1, keepdims=True)
    e = np.exp(s - mx)
    return bf16(o / l), (e @ v) / e.sum(1, keepdims=True)


def main():
    lengths = [int(a) for a in sys.argv[1:]] or [600, 4096]
    rng = np.random.default_rng(1)
    for t_len in lengths:
        for d in (64, 128):
            q, k, v = (bf16(rng.standard_normal((t_len, d))) for _ in range(3))
            for tile in (128, 64):
                out, ref = emulate(q, k, v, tile)
                err = np.abs(out - ref)
                whole = err / (6 * U * np.sqrt((ref ** 2).mean()) + 2 * U * np.abs(ref))
                rows = err / (6 * U * np.sqrt((ref ** 2).mean(1, keepdims=True)) + 2 * U * np.abs(ref))
                print(f"T={t_len:5} D={d:3} tile={tile:3}: worst/bound whole-tensor RMS {whole.max():.3f} "
                      f"(row {np.unravel_index(whole.argmax(), whole.shape)[0]}), per-row RMS {rows.max():.3f}")


if __name__ == "__main__":
    main()
