#!/usr/bin/env python3
"""PyTorch side of `ferrotron bench optim`: one optimizer step over the same
number of parameters, split into tensors of the same shapes (read from the
preset's Hugging Face config, built on the meta device), for torch's fused
AdamW and, when importable, bitsandbytes' AdamW8bit. Prints one JSON line
per optimizer, and the device copy bandwidth measured the same way.

    python3 bench/optim_torch.py --hf-dir /tmp/l1b [--steps 10]
"""
import argparse
import json
import statistics

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    cfg = AutoConfig.from_pretrained(args.hf_dir)
    with torch.device("meta"):
        shapes = [p.shape for p in AutoModelForCausalLM.from_config(cfg).parameters()]
    params = [torch.randn(s, device="cuda") * 0.02 for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    n = sum(p.numel() for p in params)
    flat = torch.empty(n, device="cuda")
    dst = torch.empty_like(flat)
    copy_ms, _ = timed(lambda: dst.copy_(flat), 2, 5)
    copy_bps = 8 * n / (copy_ms / 1e3)
    runs = [("torch-fused-adamw", lambda: torch.optim.AdamW(params, lr=1e-3, fused=True), 28.0)]
    try:
        import bitsandbytes as bnb
        runs.append(("bnb-adamw8bit", lambda: bnb.optim.AdamW8bit(params, lr=1e-3), 16.0))
    except Exception as e:  # not installed on the machine: say so
        print(json.dumps({"engine": "bnb-adamw8bit", "skipped": str(e)}))
    for name, make, bpp in runs:
        opt = make()
        med, times = timed(opt.step, args.warmup, args.steps)
        state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
        print(json.dumps({
            "engine": name, "device": torch.cuda.get_device_name(), "params": n,
            "median_step_ms": med, "step_ms": times, "state_bytes_measured": state,
            "bytes_per_param": bpp, "achieved_bytes_per_s": bpp * n / (med / 1e3),
            "copy_bytes_per_s": copy_bps, "fraction_of_copy": bpp * n / (med / 1e3) / copy_bps,
        }))
        del opt


if __name__ == "__main__":
    main()
