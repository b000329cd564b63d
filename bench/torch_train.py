#!/usr/bin/env python3
"""PyTorch reference for `ferrotron bench train`: the same model (weights
exported by `ferrotron bench train --export-init DIR`), the same batch shape and
optimizer, timed the same way (median step time after warm-up).

The PyTorch setup is the strong one: bf16 autocast, SDPA attention
(flash backend), fused AdamW, optionally torch.compile. Prints one JSON line.

    python3 bench/torch_train.py --hf-dir /tmp/init --batch 8 --seq 1024 --compile
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM


def flops_per_token(cfg, seq, causal_halved=True):
    """6 x matmul parameters (incl. the output head) + attention, the same
    formula as ferrotron's telemetry::flops (DESIGN.md)."""
    if cfg.model_type == "gpt2":
        c, layers, heads, v = cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.vocab_size
        ff = cfg.n_inner or 4 * c
        per_layer = c * 3 * c + c * c + 2 * c * ff
        kv_heads = heads
    else:
        c, layers, heads, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size
        kv_heads = cfg.num_key_value_heads
        d = c // heads
        ff = cfg.intermediate_size
        per_layer = c * (heads + 2 * kv_heads) * d + heads * d * c + 3 * c * ff
    matmul = layers * per_layer + v * c
    d = c // heads
    attn = 12 * layers * heads * d * seq
    if causal_halved:
        attn /= 2
    return 6 * matmul + attn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing (recompute)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    # Every matmul under autocast is bf16 already; TF32 for whatever stays
    # fp32 gives PyTorch its fastest setting (inductor warns without it).
    torch.set_float32_matmul_precision("high")
    dev = torch.device("cuda")
    cfg = AutoConfig.from_pretrained(args.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32, attn_implementation="sdpa").to(dev)
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True,
    )

    def loss_fn(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    step_loss = torch.compile(loss_fn) if args.compile else loss_fn
    vocab = min(cfg.vocab_size, 50257)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, vocab, (args.batch, args.seq + 1), device=dev, generator=gen)
        inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step_loss(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss.item())
    med = statistics.median(times)
    tps = args.batch * args.seq / (med / 1e3)
    fpt = flops_per_token(cfg, args.seq)
    print(json.dumps({
        "engine": "pytorch-" + ("compile" if args.compile else "eager"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch_size": args.batch,
        "seq_len": args.seq,
        "checkpointing": args.checkpointing,
        "params": sum(p.numel() for p in model.parameters()),
        "median_step_ms": med,
        "tokens_per_s": tps,
        "mfu": tps * fpt / 989e12,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "step_ms": times,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
