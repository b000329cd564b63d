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
    # one arrival per warpgroup (all its threads, modelled as one)
    empty = {"k": [Barrier(nwg) for _ in range(NS)], "v": [Barrier(nwg) for _ in range(NS)]}
    stage = {"k": [None] * NS, "v": [None] * NS}      # tile whose copy was issued into the stage
    landed = {"k": [False] * NS, "v": [False] * NS}   # ... and whether it has landed
    readers = {"k": [set() for _ in range(NS)], "v": [set() for _ in range(NS)]}
    inflight = []              # (stage, part, tile, barrier)

    def wait(bar, parity):
        while not bar.done(parity):
            yield "blocked"

    def producer():
        for j in range(nk):
            st = j % NS
            for part, full in (("k", k_full), ("v", v_full)):
                if j >= NS:
                    yield from wait(empty[part][st], (j // NS - 1) & 1)
                assert not readers[part][st], f"producer refills {part} stage {st} while {readers[part][st]} read it"
                stage[part][st], landed[part][st] = j, False
                full[st].arrive(tx=1)
                inflight.append((st, part, j, full[st]))
                yield "step"
        for j in range(max(nk - NS, 0), nk):
            yield from wait(empty["k"][j % NS], (j // NS) & 1)
            yield from wait(empty["v"][j % NS], (j // NS) & 1)

    def read(wg, st, part, j):
        assert stage[part][st] == j and landed[part][st], f"wg {wg} expects tile {j} {part} in stage {st}"
        readers[part][st].add(wg)

    def release(wg, st, part):
        readers[part][st].discard(wg)
        empty[part][st].arrive()

    def consumer(wg):
        r0 = q0 + 64 * wg
        wnk = min(t_len - 1, r0 + 63) // BK + 1 if r0 < t_len else 0
        if wnk > 0:
            yield from wait(k_full[0], 0)
            read(wg, 0, "k", 0)
            yield "step"
            release(wg, 0, "k")  # S_0 done
        for j in range(1, wnk):
            st, pst = j % NS, (j - 1) % NS
            yield from wait(k_full[st], (j // NS) & 1)
            read(wg, st, "k", j)  # issue S_j
            yield "step"
            yield from wait(v_full[pst], ((j - 1) // NS) & 1)
            read(wg, pst, "v", j - 1)  # issue PV_{j-1}
            yield "step"
            release(wg, st, "k")  # wait<1>: S_j done
            yield "step"
            release(wg, pst, "v")  # wait<0>: PV_{j-1} done
            yield "step"
        if wnk > 0:
            pst = (wnk - 1) % NS
            yield from wait(v_full[pst], ((wnk - 1) // NS) & 1)
            read(wg, pst, "v", wnk - 1)
            yield "step"
            release(wg, pst, "v")
        for j in range(wnk, nk):
            yield from wait(k_full[j % NS], (j // NS) & 1)
            empty["k"][j % NS].arrive()
            yield "step"
            yield from wait(v_full[j % NS], (j // NS) & 1)
            empty["v"][j % NS].arrive()
            yield "step"

    actors = [producer()] + [consumer(w) for w in range(nwg)]
    live = list(actors)
    idle_rounds = 0
    while live:
        if inflight and rng.random() < 0.3:
            st, part, j, bar = inflight.pop(rng.randrange(len(inflight)))
            if stage[part][st] == j:
                landed[part][st] = True
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
