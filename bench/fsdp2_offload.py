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

    python3 bench/fsdp2_offload.py --preset llama3-8b --seq 4096 --batch 1 --layers auto

The process group is "cpu:gloo,cuda:nccl" (one process): the offloaded
gradients live on the CPU, so gradient clipping's norm reduction needs gloo.
DeepSpeed ZeRO-Offload is bench/deepspeed_offload.py (installed from
carried wheels). PyTorch has no 8-bit AdamW on the CPU: compare with
ferrotron's `optimizer.name=adamw` for like-for-like state. fp32 AdamW
offload needs 16 bytes of host memory per parameter (llama3-8b: ~128 GB; the
one-GPU machine has 128 GiB): `--layers auto` (bench/offload_fit.py) takes
the deepest llama3-8b-wide shape whose estimate fits MemAvailable, and
bench/offload_speed.sh steps down further if the process dies anyway.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from offload_fit import PRESETS, host_need, mem_available, pick_layers, torch_dist_env


def build(preset, seq, layers):
    from transformers import LlamaConfig, LlamaForCausalLM
    v, c, _, heads, kv, ff, theta, tied = PRESETS[preset]
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
    ap.add_argument("--layers", default="auto", help="decoder blocks: a number, or auto (deepest that fits host memory)")
    args = ap.parse_args()
    layers, why = pick_layers(args.preset, args.layers)
    print(f"fsdp2_offload: {args.preset} width, {layers} layers ({why})", file=sys.stderr, flush=True)
    torch_dist_env(29533)
    torch.cuda.set_device(0)
    dist.init_process_group("cpu:gloo,cuda:nccl")
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    t_init = time.perf_counter()
    cfg, model = build(args.preset, args.seq, layers)
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
            # The local shard (the whole tensor at world size 1), on the
            # CPU: DTensor's own random ops would go through the CUDA RNG tracker.
            t = p.to_local() if hasattr(p, "to_local") else p
            if p.dim() >= 2:
                t.normal_(0.0, 0.02)
            else:
                t.fill_(1.0)
    # to_empty left the rotary table uninitialised: a fresh one on the GPU
    # (buffers are not offloaded; the inputs are there).
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg, device="cuda")
    init_s = time.perf_counter() - t_init
    # Fused CPU AdamW is PyTorch's fastest; where it refuses the sharded
    # (DTensor) parameters at the first step, foreach takes over.
    make_opt = lambda **kw: torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, **kw)
    opt, impl = make_opt(fused=True), "fused"
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
        del logits
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        try:
            opt.step()
        except RuntimeError as e:
            if impl != "fused" or i > 0:
                raise
            print(f"fsdp2_offload: fused AdamW refused ({str(e)[:200]}); foreach instead", file=sys.stderr, flush=True)
            opt, impl = make_opt(foreach=True), "foreach"
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
        "optimizer": "adamw (fp32 state on the CPU, %s)" % impl,
        "batch_size": args.batch,
        "seq_len": args.seq,
        "checkpointing": not args.no_checkpointing,
        "grad_clip": args.clip,
        "n_layers": layers,
        "layers_chosen": why,
        "params": sum(p.numel() for p in model.parameters()),
        "host_need_estimate_bytes": host_need(args.preset, layers),
        "host_available_at_end_bytes": mem_available(),
        "setup_s": init_s,
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
