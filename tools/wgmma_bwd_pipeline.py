#!/usr/bin/env python3
"""Model check of the mbarrier protocols of the warp-specialized backward
kernels (attention_wgmma_bwd.cu), as tools/wgmma_pipeline.py does for the
forward (whose Barrier model, with the PTX semantics, this reuses): the
producer thread and the consumer warpgroups run as generators under random
schedules; TMA copies land later, at random.

- wgmma_tma_bwd_dkv: one-shot kv_full (K and V); step `it` of niter =
  group * nq into stage it % NS (q_full / q_empty); every consumer uses
  every step. Transcribed from produce_dkv / the consumer branch.
- wgmma_tma_bwd_dq: one-shot q_full (Q and dO); key tile j of nk into stage
  j % NS (kv_full / kv_empty); consumer wg uses tiles j < wnk(wg) and
  releases every tile. Transcribed from produce_dq / the consumer branch.

Checks, for many shapes and schedules: no deadlock; a consumer reading
stage st finds the item it expects there, fully landed; the producer never
refills a stage a consumer is still reading.

    python3 tools/wgmma_bwd_pipeline.py
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wgmma_pipeline import Barrier  # noqa: E402

NS, NWG, BN, BQ = 2, 2, 128, 128


def run(n_items, uses, seed):
    """Producer loads items 0..n_items-1 after a one-shot load; consumer wg
    reads item j iff uses(wg, j), releases every item."""
    rng = random.Random(seed)
    once = Barrier(1)
    full = [Barrier(1) for _ in range(NS)]
    empty = [Barrier(NWG) for _ in range(NS)]  # one arrival per warpgroup (its threads as one)
    stage, landed = [None] * NS, [False] * NS
    once_landed = [False]
    readers = [set() for _ in range(NS)]
    inflight = []  # (stage or None for the one-shot load, item, barrier)

    def wait(bar, parity):
        while not bar.done(parity):
            yield "blocked"

    def producer():
        once.arrive(tx=1)
        inflight.append((None, None, once))
        yield "step"
        for j in range(n_items):
            st = j % NS
            if j >= NS:
                yield from wait(empty[st], (j // NS - 1) & 1)
            assert not readers[st], f"producer refills stage {st} while {readers[st]} read it"
            stage[st], landed[st] = j, False
            full[st].arrive(tx=1)
            inflight.append((st, j, full[st]))
            yield "step"
        for j in range(max(n_items - NS, 0), n_items):
            yield from wait(empty[j % NS], (j // NS) & 1)

    def consumer(wg):
        yield from wait(once, 0)
        assert once_landed[0], "one-shot tiles read before they landed"
        for j in range(n_items):
            st = j % NS
            yield from wait(full[st], (j // NS) & 1)
            if uses(wg, j):
                assert stage[st] == j and landed[st], f"wg {wg} expects item {j} in stage {st}"
                readers[st].add(wg)
                yield "step"  # the tile's wgmmas, waited for
                readers[st].discard(wg)
            empty[st].arrive()
            yield "step"

    live = [producer()] + [consumer(w) for w in range(NWG)]
    idle_rounds = 0
    while live:
        if inflight and rng.random() < 0.3:
            st, j, bar = inflight.pop(rng.randrange(len(inflight)))
            if st is None:
                once_landed[0] = True
            elif stage[st] == j:
                landed[st] = True
            bar.complete_tx(1)
            idle_rounds = 0
            continue
        a = rng.choice(live)
        try:
            r = next(a)
        except StopIteration:
            live.remove(a)
            continue
        idle_rounds = idle_rounds + 1 if r == "blocked" else 0
        assert idle_rounds < 10000 or inflight, f"deadlock ({n_items} items)"


def main():
    n = 0
    for t_len in (1, 63, 64, 65, 128, 129, 200, 256, 257, 300, 383, 384, 385, 600, 1000):
        for seed in range(40):
            rng = random.Random(seed)
            # dK/dV: a random key tile and group size, BM = 64 or 128.
            bm, group = rng.choice((64, 128)), rng.choice((1, 2, 4))
            k0 = rng.randrange(0, (t_len - 1) // BN + 1) * BN
            nq = (t_len - 1) // bm + 1 - k0 // bm
            run(group * nq, lambda wg, j: True, seed * 1000 + t_len)
            # dQ: a random query tile, BK = 64 or 128.
            bk = rng.choice((64, 128))
            q0 = rng.randrange(0, (t_len - 1) // BQ + 1) * BQ
            nk = (min(t_len, q0 + BQ) - 1) // bk + 1

            def uses(wg, j, q0=q0, bk=bk):
                r0 = q0 + 64 * wg
                return j < (min(t_len - 1, r0 + 63) // bk + 1 if r0 < t_len else 0)

            run(nk, uses, seed * 1000 + t_len + 7)
            n += 2
    print(f"ok: {n} random schedules, no deadlock, no stage read before it landed or refilled while read")


if __name__ == "__main__":
    main()
