#!/usr/bin/env python3
"""Markdown tables from the JSON lines the GPU scripts write, for the files
under bench/results/ (the raw lines go next to the table).

    python3 bench/tables.py train bench.jsonl   # ferrotron vs PyTorch training steps
    python3 bench/tables.py optim optim.jsonl   # optimizer step: ratios, bandwidth, memory

train: groups lines by workload (preset or params, batch, seq, recompute / checkpointing)
and engine; reports the median over repeated runs of each engine and the
ratio of ferrotron's tokens/s to each PyTorch engine's.
optim: one row per engine/optimizer (first occurrence), the ratios
AdamW / torch fused AdamW and AdamW8bit / bitsandbytes, and measured vs
planned state (and workspace).
"""
import json
import statistics
import sys


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().startswith("{")]


def gb(b):
    return f"{b / 1e9:.2f} GB" if b else ""


def train_table(rows):
    groups = {}
    for r in rows:
        if "tokens_per_s" not in r or "profile" in r:
            continue
        # By size, not preset name: the PyTorch lines carry no preset (and
        # builds before the real-parameter count included padding, +0.03%).
        size = f"{r.get('params', 0) / 1e6:.0f}M params"
        # ferrotron's checkpoint_layers and PyTorch's checkpointing are the
        # same technique and share a group; elementwise recompute has its own.
        ckpt = bool(r.get("checkpoint_layers") or r.get("checkpointing"))
        mode = "checkpoint" if ckpt else ("recompute" if r.get("recompute") else "")
        # Runs of the since-removed atomic-dQ attention backward (older files
        # under bench/results/ say atomic_dq): keep them out of the default
        # path's medians.
        mode += " atomic-dQ" if r.get("atomic_dq") else ""
        work = (size, r.get("batch_size"), r.get("seq_len"), mode.strip())
        # checkpoint_layers that keeps each block's attention output: its own
        # ferrotron row in the same group as PyTorch's checkpointing.
        engine = r["engine"] + (" (attention kept)" if r.get("checkpoint_keep_attention") else "")
        groups.setdefault(work, {}).setdefault(engine, []).append(r)
    out = ["| workload | engine | runs | median tokens/s | ratio (ferrotron / this) | MFU | peak memory |", "|---|---|---|---|---|---|---|"]
    for (size, batch, seq, recompute), engines in groups.items():
        med = {e: statistics.median(x["tokens_per_s"] for x in rs) for e, rs in engines.items()}
        ours = med.get("ferrotron")
        others = [e for e in engines if not e.startswith("ferrotron")]
        for e, rs in engines.items():
            ratio = f"{ours / med[e]:.2f}×" if ours and e in others else ""
            if e.startswith("ferrotron ") and len(others) == 1:
                ratio = f"{med[e] / med[others[0]]:.2f}× vs {others[0]}"
            mfu = statistics.median(x.get("mfu", 0) for x in rs)
            peak = max(x.get("peak_mem_bytes", 0) for x in rs)
            work = f"{size} {batch}×{seq}" + (f" {recompute}" if recompute else "")
            out.append(f"| {work} | {e} | {len(rs)} | {med[e]:,.0f} | {ratio} | {100 * mfu:.1f}% | {gb(peak)} |")
    return "\n".join(out)


def optim_table(rows):
    seen, table = set(), []
    for r in rows:
        key = (r["engine"], r.get("optimizer"))
        if key not in seen:
            seen.add(key)
            table.append(r)
    step = {(r["engine"], r.get("optimizer")): r["median_step_ms"] for r in table}
    out = ["| engine | optimizer | step (ms) | fraction of copy | state measured | state planned | workspace (live after steps / plan) |", "|---|---|---|---|---|---|---|"]
    for r in table:
        frac = r.get("fraction_of_copy")
        measured = r.get("state_bytes_measured", 0) - (r.get("workspace_bytes") or 0)
        # Scratch the backend grows during the steps (bf16 copies of the
        # Newton–Schulz operands) is workspace too: count what was live after.
        after = r.get("bytes_after_steps")
        ws_alloc = after - measured if after else r.get("workspace_bytes")
        ws = f"{gb(ws_alloc)} / {gb(r.get('workspace_bytes_estimate')) or '(not reported)'}" if r.get("workspace_bytes") else ""
        out.append(
            f"| {r['engine']} | {r.get('optimizer', '')} | {r['median_step_ms']:.2f} | {'' if frac is None else f'{frac:.2f}'} "
            f"| {gb(measured)} | {gb(r.get('state_bytes_estimate'))} | {ws} |"
        )
    pairs = [("adamw", "torch-fused-adamw"), ("adamw8bit", "bnb-adamw8bit")]
    for ours, theirs in pairs:
        a, b = step.get(("ferrotron", ours)), step.get((theirs, None))
        if a and b:
            out.append(f"\n{ours}: {a:.2f} ms vs {theirs} {b:.2f} ms = **{b / a:.2f}×**")
    return "\n".join(out)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("train", "optim"):
        sys.exit(__doc__)
    rows = lines(sys.argv[2])
    print(train_table(rows) if sys.argv[1] == "train" else optim_table(rows))


if __name__ == "__main__":
    main()
