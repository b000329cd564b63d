#!/usr/bin/env python3
"""PyTorch competitor of ferrotron's optimizer offload: FSDP2
(`torch.distributed.fsdp.fully_shard`) with `CPUOffloadPolicy` at world
size 1 — fp32 parameters, gradients and AdamW state in pinned host memory,
the optimizer step on the CPU, bf16 compute (MixedPrecisionPolicy), one
`fully_shard` per decoder block plus the root, activation checkpointing
per block. The model is transformers' LlamaForCausalLM built from the
shape of a ferrotron preset (random weights: speed, not quality), the
batch random tokens; timed like `ferrotron bench train`: median step
(zero_grad, forward, backward, clip, step, synchronize) after warm-up.
Prints one JSON line (host peak RSS included).

    python3 bench/fsdp2_offload.py --preset llama3-8b --seq 4096 --batch 1

DeepSpeed is not on the GPU machine; FSDP2 with CPU offload is the
strongest offload setup that is. PyTorch has no 8-bit AdamW on the CPU:
compare with ferrotron's `optimizer.name=adamw` for like-for-like state.
fp32 AdamW offload needs 16 bytes of host memory per parameter (llama3-8b:
~128 GB; the one-GPU machine has 128 GiB), so llama3-8b may not fit here.
"""
import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

PRESETS = {
    # name: (vocab, d_model, layers, heads, kv_heads, d_ff, rope_theta, tied)
    "llama-1b": (50257, 2048, 24, 32, 32, 5461, 10000.0, False),
    "llama3-8b": (128256, 4096, 32, 32, 8, 14336, 500000.0, False),
}


def build(preset, seq):
    from transformers import LlamaConfig, LlamaForCausalLM
    v, c, layers, heads, kv, ff, theta, tied = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=v, hidden_size=c, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=ff, rope_theta=theta, tie_word_embeddings=tied,
                      max_position_embeddings=max(seq, 2048), rms_norm_eps=1e-6, attn_implementation="sdpa")
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return cfg, model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama3-8b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--clip", type=float, default=0.0, help="gradient clipping (0: off, like ferrotron's overlapped offload)")
    ap.add_argument("--no-checkpointing", action="store_true")
    args = ap.parse_args()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl")
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    cfg, model = build(args.preset, args.seq)
    if not args.no_checkpointing:
        for i, block in enumerate(model.model.layers):
            model.model.layers[i] = checkpoint_wrapper(block)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    off = CPUOffloadPolicy(pin_memory=True)
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp, offload_policy=off)
    fully_shard(model, mp_policy=mp, offload_policy=off)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)
    # to_empty left the rotary table uninitialised: a fresh one on the GPU
    # (buffers are not offloaded; the inputs are there).
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg, device="cuda")
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        fused = True
    except Exception:  # fused CPU AdamW missing: foreach
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
        fused = False
    gen = torch.Generator(device="cuda").manual_seed(1337)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device="cuda", generator=gen)
        inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inp).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1))
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss.item())
    med = statistics.median(times)
    print(json.dumps({
        "engine": "pytorch-fsdp2-cpu-offload",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "preset": args.preset,
        "optimizer": "adamw (fp32 state on the CPU, fused=%s)" % fused,
        "batch_size": args.batch,
        "seq_len": args.seq,
        "checkpointing": not args.no_checkpointing,
        "grad_clip": args.clip,
        "params": sum(p.numel() for p in model.parameters()),
        "median_step_ms": med,
        "tokens_per_s": args.batch * args.seq / (med / 1e3),
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_ms": times,
        "losses": losses,
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
