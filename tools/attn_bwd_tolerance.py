#!/usr/bin/env python3
"""Emulates the roundings of the tensor-core attention backwards (fa2 and
wgmma alike: P and dS rounded to bf16 before the products that take them
as operands, fp32 sums taken as exact, delta from the saved bf16 output,
dq / dk / dv rounded to bf16) on random N(0,1) bf16 inputs of one head,
causal, against a float64 reference on the same saved output (as
tests/cuda_ops.rs uploads the GPU's output to the CPU twin), and prints the
worst element's ratio to ATTN_BWD's bound (rtol 4U, atol 12U x RMS) with
the RMS of the whole section (`assert_close`, used up to T = 1024) and with
each row's own RMS (`assert_close_rows`, used past T = 1024).

    python3 tools/attn_bwd_tolerance.py [T ...]      (default 600 4096; needs numpy)
"""
import sys

import numpy as np

U = 2.0 ** -8


def bf16(x):
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def gradients(q, k, v, do, o, round_ops):
    """(dq, dk, dv) of one causal head given the saved output o."""
    t_len, d = q.shape
    s = (q @ k.T) / np.sqrt(d)
    s[np.triu_indices(t_len, 1)] = -np.inf
    mx = s.max(1, keepdims=True)
    e = np.exp(s - mx)
    p = e / e.sum(1, keepdims=True)
    ds = p * (do @ v.T - (do * o).sum(1, keepdims=True))
    r = bf16 if round_ops else (lambda x: x)
    return r(ds) @ k / np.sqrt(d), r(ds).T @ q / np.sqrt(d), r(p).T @ do


def ratios(gpu, ref, floor):
    """Worst |gpu - ref| / (atol + rtol |ref|): whole-tensor RMS, per-row RMS;
    `floor` (the test's 1e-5 x RMS of the whole gradient) added to the atol,
    for dq's first row, exactly 0."""
    err = np.abs(gpu - ref)
    whole = err / (12 * U * np.sqrt((ref ** 2).mean()) + floor + 4 * U * np.abs(ref))
    rows = err / (12 * U * np.sqrt((ref ** 2).mean(1, keepdims=True)) + floor + 4 * U * np.abs(ref))
    return whole.max(), rows.max()


def main():
    lengths = [int(a) for a in sys.argv[1:]] or [600, 4096]
    rng = np.random.default_rng(1)
    for t_len in lengths:
        for d in (64, 128):
            q, k, v, do = (bf16(rng.standard_normal((t_len, d))) for _ in range(4))
            s = (q @ k.T) / np.sqrt(d)
            s[np.triu_indices(t_len, 1)] = -np.inf
            e = np.exp(s - s.max(1, keepdims=True))
            o = bf16((e / e.sum(1, keepdims=True)) @ v)  # the saved output
            ref = gradients(q, k, v, do, o, False)
            emu = [bf16(g) for g in gradients(q, k, v, do, o, True)]
            floor = 1e-5 * np.sqrt(np.mean(np.concatenate([(g ** 2).ravel() for g in ref])))
            line = ", ".join(f"{n} {w:.2f} / {r:.2f}" for n, g, f in zip(("dq", "dk", "dv"), emu, ref) for w, r in [ratios(g, f, floor)])
            print(f"T={t_len:5} D={d:3}: worst/allowed (whole RMS / per-row RMS): {line}")


if __name__ == "__main__":
    main()
