#!/usr/bin/env python3
"""DeepSpeed ZeRO-Offload, the competitor issue 14 names for ferrotron's
optimizer offload: ZeRO stage 2 with `offload_optimizer: cpu` (pinned), bf16,
DeepSpeed's CPU AdamW (DeepSpeedCPUAdam, its SIMD C++ op), one process on
one GPU. The model is transformers' LlamaForCausalLM at a ferrotron preset's
width (random weights: speed, not quality), per-block activation
checkpointing, batch of random tokens; timed like `ferrotron bench train`
and bench/fsdp2_offload.py: median step (forward, backward, step,
synchronize) after warm-up. Prints one JSON line.

    python3 bench/deepspeed_offload.py --preset llama3-8b --seq 4096 --batch 1 --layers auto

The GPU machine has no internet: when `import deepspeed` fails, DeepSpeed
0.19.8 and its dependencies are installed from the wheels carried in
.dev/wheels (`pip install --no-index --find-links`; the wheels are made by
bench/deepspeed_wheels.sh). The DeepSpeed wheel is pure Python: the CPU Adam
op (two C++ files) is built at first use by the machine's g++ through ninja
(JIT, into TORCH_EXTENSIONS_DIR); the JSON reports the install and build
times, and `--install-only` does just those two. Compiling those two files
took 107 CPU-seconds here (bench/offload_compare.md): about a minute with
ninja's two parallel jobs.
Host memory: ZeRO-2 offload keeps an fp32 master copy, fp32 gradients and
AdamW's two moments on the host, 16 bytes a parameter, like FSDP2's offload:
`--layers auto` steps the depth down as bench/offload_fit.py says.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from offload_fit import PRESETS, host_need, mem_available, pick_layers, torch_dist_env

WHEELS = os.environ.get("DS_WHEELS", ".dev/wheels")


def ensure_deepspeed():
    """Imports deepspeed, installing it from WHEELS first when missing.
    Returns the install time in seconds (0 when already installed)."""
    # pip's `ninja` launcher must be on PATH for the op build.
    import sysconfig
    os.environ["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), os.path.expanduser("~/.local/bin"),
                                          os.environ.get("PATH", "")])
    try:
        import deepspeed  # noqa: F401
        return 0.0
    except ImportError:
        pass
    if not os.path.isdir(WHEELS):
        sys.exit(f"deepspeed is not installed and {WHEELS} (its carried wheels) is missing: see bench/README.md")
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", WHEELS, "deepspeed==0.19.8"]
    r = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 and "externally-managed-environment" in r.stderr:
        # A distribution's Python (PEP 668): the machine is ours for this run.
        r = subprocess.run(cmd + ["--break-system-packages"], stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"installing deepspeed from {WHEELS} failed:\n{r.stderr[-3000:]}")
    import importlib
    import site
    importlib.invalidate_caches()
    site.addsitedir(site.getusersitepackages())  # where a non-root pip puts it
    import deepspeed  # noqa: F401
    return time.perf_counter() - t


def build_cpu_adam():
    """Builds (or loads from the extension cache) DeepSpeed's CPU Adam op;
    its wall time in seconds."""
    from deepspeed.ops.op_builder import CPUAdamBuilder
    t = time.perf_counter()
    CPUAdamBuilder().load(verbose=False)
    return time.perf_counter() - t


def build_model(preset, seq, layers):
    """transformers' Llama at the preset's width, bf16, on the GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    v, c, _, heads, kv, ff, theta, tied = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=v, hidden_size=c, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=ff, rope_theta=theta, tie_word_embeddings=tied,
                      max_position_embeddings=max(seq, 2048), rms_norm_eps=1e-6, attn_implementation="sdpa",
                      use_cache=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bf16: no fp32 copy of 8B weights on the GPU
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return cfg, model


def ds_config(args):
    return {
        "train_micro_batch_size_per_gpu": args.batch,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e8,
            "allgather_bucket_size": 5e8,
        },
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
        "gradient_clipping": args.clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama3-8b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--clip", type=float, default=0.0, help="gradient clipping (0: off)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--layers", default="auto", help="decoder blocks: a number, or auto (deepest that fits host memory)")
    ap.add_argument("--install-only", action="store_true", help="install DeepSpeed and build CPU Adam, then stop")
    args = ap.parse_args()

    install_s = ensure_deepspeed()
    build_s = build_cpu_adam()
    print(f"deepspeed_offload: install {install_s:.1f} s, CPU Adam op {build_s:.1f} s", file=sys.stderr, flush=True)
    if args.install_only:
        print(json.dumps({"engine": "deepspeed", "install_s": install_s, "cpu_adam_build_s": build_s}))
        return
    layers, why = pick_layers(args.preset, args.layers)
    print(f"deepspeed_offload: {args.preset} width, {layers} layers ({why})", file=sys.stderr, flush=True)

    import deepspeed
    import torch
    import torch.nn.functional as F
    torch_dist_env(29534)
    torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl")
    t_init = time.perf_counter()
    cfg, model = build_model(args.preset, args.seq, layers)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config(args))
    init_s = time.perf_counter() - t_init
    gen = torch.Generator(device="cuda").manual_seed(1337)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device="cuda", generator=gen)
        inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = engine(input_ids=inp).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1))
        del logits
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            times.append(dt)
            losses.append(loss.item())
    med = statistics.median(times)
    print(json.dumps({
        "engine": "deepspeed-zero2-offload",
        "deepspeed": deepspeed.__version__,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "preset": args.preset,
        "optimizer": "DeepSpeedCPUAdam (AdamW mode, fp32 state on the CPU)",
        "batch_size": args.batch,
        "seq_len": args.seq,
        "checkpointing": not args.no_checkpointing,
        "grad_clip": args.clip,
        "n_layers": layers,
        "layers_chosen": why,
        "params": sum(p.numel() for p in model.parameters()),
        "host_need_estimate_bytes": host_need(args.preset, layers),
        "host_available_at_end_bytes": mem_available(),
        "install_s": install_s,
        "cpu_adam_build_s": build_s,
        "setup_s": init_s,
        "median_step_ms": med,
        "tokens_per_s": args.batch * args.seq / (med / 1e3),
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_ms": times,
        "losses": losses,
    }))


if __name__ == "__main__":
    main()
