#!/usr/bin/env python3
"""Model check of the mbarrier protocol of wgmma_tma_fwd
(attention_wgmma.cu): the producer thread and the consumer warpgroups run
as generators under random schedules, over barriers with the PTX semantics
(a phase completes when its pending arrivals reach 0 and its expected
transaction bytes have landed; try_wait.parity(P) succeeds once the phase of
parity P has completed, i.e. the current phase's parity is not P). Each step
is transcribed from produce() / consume(); TMA copies land later, at random.

Checks, for many (T, tile counts) and schedules: no deadlock; a consumer
reading stage st finds the tile it expects there, fully landed; the producer
never refills a stage a consumer is still reading.

    python3 tools/wgmma_pipeline.py
"""
import random

BK, NS = 128, 2


class Barrier:
    def __init__(self, count):
        self.count, self.phase, self.pending, self.tx = count, 0, count, 0

    def arrive(self, tx=0):
        self.tx += tx
        self.pending -= 1
        self._maybe_complete()

    def complete_tx(self, nbytes):
        self.tx -= nbytes
        self._maybe_complete()

    def _maybe_complete(self):
        assert self.pending >= 0, "more arrivals than the count in one phase"
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def done(self, parity):
        return (self.phase & 1) != parity


def run(t_len, nwg, seed):
    rng = random.Random(seed)
    bq = 64 * nwg
    q0 = 0 if t_len <= bq else rng.randrange(0, (t_len - 1) // bq + 1) * bq
    nk = (min(t_len, q0 + bq) - 1) // BK + 1
    k_full = [Barrier(1) for _ in range(NS)]
    v_full = [Barrier(1) for _ in range(NS)]
    empty = [Barrier(nwg) for _ in range(NS)]  # one arrival per warpgroup (all its threads, modelled as one)
    stage = [None] * NS        # tile whose copy was issued into the stage
    landed = [set() for _ in range(NS)]  # "k"/"v" parts of it that have landed
    readers = [set() for _ in range(NS)]
    inflight = []              # (stage, part, tile, barrier)

    def wait(bar, parity):
        while not bar.done(parity):
            yield "blocked"

    def producer():
        for j in range(nk):
            st = j % NS
            if j >= NS:
                yield from wait(empty[st], (j // NS - 1) & 1)
            assert not readers[st], f"producer refills stage {st} while warpgroups {readers[st]} read it"
            stage[st], landed[st] = j, set()
            k_full[st].arrive(tx=1)
            inflight.append((st, "k", j, k_full[st]))
            yield "step"
            v_full[st].arrive(tx=1)
            inflight.append((st, "v", j, v_full[st]))
            yield "step"
        for j in range(max(nk - NS, 0), nk):
            yield from wait(empty[j % NS], (j // NS) & 1)

    def read(wg, st, part, j):
        assert stage[st] == j and part in landed[st], f"wg {wg} expects tile {j} {part} in stage {st}"
        readers[st].add(wg)

    def consumer(wg):
        r0 = q0 + 64 * wg
        wnk = min(t_len - 1, r0 + 63) // BK + 1 if r0 < t_len else 0
        if wnk > 0:
            yield from wait(k_full[0], 0)
            read(wg, 0, "k", 0)
            yield "step"
        for j in range(1, wnk):
            st, pst = j % NS, (j - 1) % NS
            yield from wait(k_full[st], (j // NS) & 1)
            read(wg, st, "k", j)
            yield "step"
            yield from wait(v_full[pst], ((j - 1) // NS) & 1)
            read(wg, pst, "v", j - 1)
            yield "step"
            readers[st].discard(wg) if st != pst else None  # S_j done (wait<1>); K_j no longer read
            yield "step"
            readers[pst].discard(wg)  # PV_{j-1} done (wait<0>)
            empty[pst].arrive()
            yield "step"
        if wnk > 0:
            pst = (wnk - 1) % NS
            yield from wait(v_full[pst], ((wnk - 1) // NS) & 1)
            read(wg, pst, "v", wnk - 1)
            yield "step"
            readers[pst].discard(wg)
            empty[pst].arrive()
        for j in range(wnk, nk):
            yield from wait(k_full[j % NS], (j // NS) & 1)
            empty[j % NS].arrive()
            yield "step"

    actors = [producer()] + [consumer(w) for w in range(nwg)]
    live = list(actors)
    idle_rounds = 0
    while live:
        if inflight and rng.random() < 0.3:
            st, part, j, bar = inflight.pop(rng.randrange(len(inflight)))
            if stage[st] == j:
                landed[st].add(part)
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
        assert idle_rounds < 10000 or inflight, f"deadlock (T={t_len}, q0={q0}, nk={nk})"


def main():
    n = 0
    for nwg in (2, 3):
        for t_len in (1, 63, 64, 65, 128, 129, 200, 256, 257, 300, 383, 384, 385, 600, 1000):
            for seed in range(60):
                run(t_len, nwg, seed * 1000 + t_len)
                n += 1
    print(f"ok: {n} random schedules, no deadlock, no stage read before it landed or refilled while read")


if __name__ == "__main__":
    main()
