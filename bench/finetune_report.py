#!/usr/bin/env python3
"""Summary of fine-tune runs (bench/finetune_8b.sh): for each run folder,
the loss curve, the validation loss, tokens/s and the device peak, from its
metrics.jsonl and config.toml. Prints markdown.

usage: finetune_report.py LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Tokens/s is the median over the steps after the first two (the first steps
include the kernels' first compilation and the allocator's growth); the
device peak is the largest `peak_mem_bytes` any step reported.
"""
import json
import os
import statistics
import sys


def read_metrics(run):
    train, evals = [], []
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            m = json.loads(line)
            if m.get("kind") == "train":
                train.append(m)
            elif m.get("kind") == "eval":
                evals.append(m)
    return train, evals


def config_value(run, dotted):
    """`section.key` of the run's config.toml as text, or '?' (a flat
    reader: the values needed here are plain scalars)."""
    want_section, _, want_key = dotted.rpartition(".")
    section = ""
    try:
        with open(os.path.join(run, "config.toml"), encoding="utf-8") as f:
            for line in f:
                s = line.strip()
                if s.startswith("["):
                    section = s.strip("[]")
                    continue
                k, sep, v = s.partition("=")
                if sep and section == want_section and k.strip() == want_key:
                    return v.strip().strip('"')
    except OSError:
        pass
    return "?"


def summarize(label, run):
    train, evals = read_metrics(run)
    if not train:
        return f"### {label}\n\n{run}: no training step was logged\n"
    steady = train[2:] or train
    tps = statistics.median(m["tokens_per_s"] for m in steady)
    step_ms = statistics.median(m["step_ms"] for m in steady)
    peak = max(m.get("peak_mem_bytes", 0) for m in train)
    curve = " ".join(f"{m['loss']:.3f}" for m in train)
    lines = [
        f"### {label}",
        "",
        f"- run `{run}`: {len(train)} steps, batch {config_value(run, 'train.batch_size')} x {config_value(run, 'train.seq_len')}, "
        f"optimizer {config_value(run, 'optimizer.name')}, lr {float(config_value(run, 'optimizer.lr')):.3g}, "
        f"offload.optimizer {config_value(run, 'offload.optimizer')}, {config_value(run, 'model.n_layers')} layers, "
        f"weights from {config_value(run, 'model.init_from') or 'random init'}",
        f"- median step {step_ms:.0f} ms, **{tps:,.0f} tokens/s**, device peak **{peak / 1e9:.1f} GB**",
        f"- loss, step 1 to {len(train)}: {curve}",
    ]
    if evals:
        lines.append(f"- validation loss at step {evals[-1]['step']}: {evals[-1].get('val_loss', evals[-1].get('loss')):.4f}")
    phases = [k for k in ("offload_d2h_ms", "offload_opt_ms", "offload_h2d_ms", "offload_wait_ms") if k in steady[0]]
    if phases:
        lines.append("- offload phases (median ms): " + ", ".join(
            f"{k[8:-3]} {statistics.median(m[k] for m in steady):.0f}" for k in phases))
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        label, sep, run = arg.partition("=")
        if not sep:
            sys.exit(f"expected LABEL=RUN_DIR, got {arg!r}")
        print(summarize(label, run))


if __name__ == "__main__":
    main()
