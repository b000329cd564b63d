#!/usr/bin/env python3
"""Largest Llama-shaped model that trains one step on one GPU (issue 14):
PyTorch AdamW vs ferrotron GPU-only vs ferrotron offload.optimizer = cpu vs
nvme vs nvme with offload.params = nvme too (engine `nvme-params`: the bf16
weights also stream from the files, read ahead offload.prefetch units). Shape: llama3-8b's width (d_model 4096, d_ff 14336, 32 heads, 8 kv
heads, vocabulary 128256), n_layers varied; batch 1, seq 2048, activation
checkpointing per block in every engine.

PyTorch baseline: transformers LlamaForCausalLM built from a config (random
init, fp32 master weights on the GPU), bf16 autocast, SDPA, fused AdamW,
gradient checkpointing (no torch.compile: it changes speed, not the
weights/gradients/state bytes that set the limit).

For each engine the layer counts in --layers are tried in increasing order,
one fresh process per try, one step each, until one fails (out of memory,
host memory or disk refused, or the per-try timeout). One JSON line per try
and one summary per engine into $OUT/offload_max_params.jsonl.

    python3 bench/offload_max_params.py --engines pytorch,gpu,cpu,nvme,nvme-params --nvme-path /tmp/ft_nvme
"""
import argparse
import json
import os
import subprocess
import sys
import time

BIN = os.environ.get("FERROTRON_BIN", "./target/release/ferrotron")
SHAPE = dict(d_model=4096, d_ff=14336, n_heads=32, n_kv_heads=8, vocab=128256)


def params(layers):
    c, f, v = SHAPE["d_model"], SHAPE["d_ff"], SHAPE["vocab"]
    d = c // SHAPE["n_heads"]
    per_layer = c * (SHAPE["n_heads"] + 2 * SHAPE["n_kv_heads"]) * d + c * c + 3 * c * f + 2 * c
    return layers * per_layer + 2 * v * c + c


TORCH = r'''
import json, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
layers, seq = int(sys.argv[1]), int(sys.argv[2])
cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  vocab_size=128256, num_hidden_layers=layers, max_position_embeddings=seq, tie_word_embeddings=False,
                  attn_implementation="sdpa")
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model.gradient_checkpointing_enable()
model.config.use_cache = False
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
x = torch.randint(0, 128256, (1, seq + 1), device="cuda")
t = time.time()
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = model(input_ids=x[:, :-1], labels=x[:, 1:]).loss
loss.backward()
opt.step()
opt.zero_grad(set_to_none=True)
torch.cuda.synchronize()
print(json.dumps({"loss": loss.item(), "step_s": time.time() - t, "peak_mem_bytes": torch.cuda.max_memory_allocated(),
                  "params": sum(p.numel() for p in model.parameters())}))
'''


def command(engine, layers, seq, nvme_path, optimizer):
    if engine == "pytorch":
        return [sys.executable, "-c", TORCH, str(layers), str(seq)]
    sets = {
        "model.preset": "llama3-8b", "model.n_layers": layers, "model.max_seq_len": seq, "device": "cuda",
        "train.batch_size": 1, "train.seq_len": seq, "train.checkpoint_layers": "true", "optimizer.name": optimizer,
    }
    if engine in ("cpu", "nvme"):
        sets["offload.optimizer"] = engine
    if engine == "nvme-params":
        sets["offload.optimizer"] = "nvme"
        sets["offload.params"] = "nvme"
    if engine in ("nvme", "nvme-params"):
        sets["offload.path"] = f'"{nvme_path}"'
    cmd = [BIN, "bench", "train", "--warmup", "0", "--steps", "1"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="pytorch,gpu,cpu,nvme")
    ap.add_argument("--layers", default="16,24,32,40,48,56,64,72,80,96")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--optimizer", default="adamw", help="ferrotron's optimizer.name (adamw or adamw8bit)")
    ap.add_argument("--nvme-path", default="/tmp/ferrotron_nvme")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per try")
    ap.add_argument("--seconds", type=int, default=480, help="total budget")
    a = ap.parse_args()
    out_dir = os.environ.get("OUT", ".")
    out = open(os.path.join(out_dir, "offload_max_params.jsonl"), "a")
    start = time.time()
    for engine in a.engines.split(","):
        best = None
        for layers in [int(x) for x in a.layers.split(",")]:
            left = a.seconds - (time.time() - start)
            if left < 30:
                break
            t = time.time()
            try:
                p = subprocess.run(command(engine, layers, a.seq, a.nvme_path, a.optimizer), capture_output=True, text=True, timeout=min(a.timeout, left))
                ok, tail = p.returncode == 0, (p.stdout + p.stderr)[-600:]
            except subprocess.TimeoutExpired:
                ok, tail = False, "timeout"
            line = {"engine": engine, "layers": layers, "params": params(layers), "ok": ok, "wall_s": round(time.time() - t, 1), "tail": tail.strip().splitlines()[-3:]}
            print(json.dumps(line), flush=True)
            out.write(json.dumps(line) + "\n")
            if not ok:
                break
            best = layers
        summary = {"engine": engine, "summary": True, "max_layers": best, "max_params": params(best) if best else None}
        print(json.dumps(summary), flush=True)
        out.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
