#!/usr/bin/env python3
"""The strongest PyTorch setup a practitioner would train ferrotron's presets
with, for side-by-side speed (DESIGN.md "Benchmarks that convince"):

- a minimal model written directly in torch: nanoGPT-style GPT-2 (LayerNorm,
  GELU, learned positions, tied head) or Llama-style (RMSNorm, RoPE, SwiGLU,
  grouped-query attention), shapes read from ferrotron's configs/<preset>.toml;
- the WHOLE model (embedding to loss) under torch.compile;
- vocabulary padded to a multiple of 64 (50257 -> 50304), SwiGLU width to a
  multiple of 64 (5461 -> 5504), as ferrotron pads them;
- SDPA, causal, with the flash or cuDNN backend: `--sdpa best` times both at
  the run's attention shape (forward + backward) and uses the faster;
- precision: fp32 master weights, bf16 autocast for compute (PyTorch AMP),
  loss in fp32; fused AdamW (or bitsandbytes AdamW8bit with
  `--optim adamw8bit`), gradient-norm clipping at 1.0 as ferrotron does;
- optional activation checkpointing per block (non-reentrant, inside the
  compiled model).

Timing: median step time after warm-up (the first step compiles), with its
spread; peak memory; FLOPs per token by the formula of bench/torch_train.py
and ferrotron's telemetry (6 x matmul parameters without padding + causal
attention). Prints one JSON line per timed block.

`--repeats R --between CMD` runs CMD (ferrotron on the same workload) before
each of R timed blocks, in this process's pauses, so the two engines
alternate in one session without compiling again; CMD's JSON line is printed
too. This process keeps its weights and optimizer state on the GPU
meanwhile (gradients and cached blocks are freed first).

    python3 bench/strong_torch.py --preset llama-1b --batch 4 --seq 2048
    python3 bench/strong_torch.py --summarize strong.jsonl   # markdown table
"""
import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

# Defaults of ferrotron's ModelConfig (src/config.rs) for keys a preset omits.
MODEL_DEFAULTS = {"vocab_multiple": 64, "ffn_multiple": 64, "norm_eps": 1e-5, "rope_theta": 10000.0,
                  "tied_embeddings": True, "bias": True, "init_std": 0.02, "n_kv_heads": None}
PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, as ferrotron's telemetry


def load_preset(name):
    """[model] and [optimizer] of configs/<name>.toml (gpt2 = gpt2-124m)."""
    import tomllib
    name = {"gpt2": "gpt2-124m"}.get(name, name)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", name + ".toml")
    if not os.path.exists(path):
        sys.exit(f"no preset {name!r}: {path} does not exist")
    with open(path, "rb") as f:
        toml = tomllib.load(f)
    m = {**MODEL_DEFAULTS, **toml["model"]}
    m["n_kv_heads"] = m["n_kv_heads"] or m["n_heads"]
    m["preset"] = name
    return m, toml.get("optimizer", {})


def round_up(x, multiple):
    return (x + multiple - 1) // multiple * multiple


def flops_per_token(m, seq):
    """6 x matmul parameters (incl. the output head, no padding) + causal
    attention, the formula of bench/torch_train.py and telemetry::flops."""
    c, layers, heads, kv = m["d_model"], m["n_layers"], m["n_heads"], m["n_kv_heads"]
    d = c // heads
    if m["mlp"] == "swiglu":
        per_layer = c * (heads + 2 * kv) * d + heads * d * c + 3 * c * m["d_ff"]
    else:
        per_layer = c * 3 * c + c * c + 2 * c * m["d_ff"]
    matmul = layers * per_layer + m["vocab_size"] * c
    return 6 * matmul + 12 * layers * heads * d * seq / 2


def build_model(m, seq, sdpa, checkpointing):
    """The model as an nn.Module whose forward(x, y) returns the mean loss."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    c, heads, kv = m["d_model"], m["n_heads"], m["n_kv_heads"]
    hd = c // heads
    vocab = round_up(m["vocab_size"], m["vocab_multiple"])
    llama = m["mlp"] == "swiglu"
    ff = round_up(m["d_ff"], m["ffn_multiple"]) if llama else m["d_ff"]
    bias = m["bias"]
    # The cuDNN backend takes no enable_gqa: k and v are expanded to the
    # query heads for it (a copy of 2·T·kv·hd values per layer, small).
    native_gqa = sdpa != "cudnn"

    def norm(dim):
        return nn.RMSNorm(dim, eps=m["norm_eps"]) if m["norm"] == "rmsnorm" else nn.LayerNorm(dim, eps=m["norm_eps"], bias=bias)

    inv_freq = 1.0 / (m["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)

    def rope(x, cos, sin):  # x: (B, h, T, hd); rotate-half convention (HF Llama)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = norm(c), norm(c)
            self.qkv = nn.Linear(c, (heads + 2 * kv) * hd, bias=bias)
            self.proj = nn.Linear(heads * hd, c, bias=bias)
            self.fc = nn.Linear(c, 2 * ff if llama else ff, bias=bias)
            self.fc_proj = nn.Linear(ff, c, bias=bias)

        def attention(self, x, cos, sin):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).split([heads * hd, kv * hd, kv * hd], dim=-1)
            q, k, v = (z.view(b, t, -1, hd).transpose(1, 2) for z in (q, k, v))
            if cos is not None:
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            if kv != heads and not native_gqa:
                k, v = (z.repeat_interleave(heads // kv, dim=1) for z in (k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != heads and native_gqa)
            return self.proj(y.transpose(1, 2).reshape(b, t, heads * hd))

        def mlp(self, x):
            h = self.fc(x)
            if llama:
                gate, up = h.chunk(2, dim=-1)
                return self.fc_proj(F.silu(gate) * up)
            return self.fc_proj(F.gelu(h, approximate="tanh"))

        def forward(self, x, cos, sin):
            x = x + self.attention(self.ln1(x), cos, sin)
            return x + self.mlp(self.ln2(x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, c)
            self.wpe = None if m["positions"] == "rope" else nn.Embedding(m["max_seq_len"], c)
            self.blocks = nn.ModuleList(Block() for _ in range(m["n_layers"]))
            self.ln_f = norm(c)
            self.head = nn.Linear(c, vocab, bias=False)
            if m["tied_embeddings"]:
                self.head.weight = self.wte.weight
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)
            std, resid = m["init_std"], m["init_std"] / math.sqrt(2 * m["n_layers"])
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, 0.0, resid if name.endswith("proj.weight") else std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.wte(idx)
            cos = sin = None
            if self.wpe is not None:
                x = x + self.wpe(torch.arange(t, device=idx.device))
            else:
                cos, sin = self.cos[:t], self.sin[:t]  # (T, hd/2): rope() rotates halves
            for block in self.blocks:
                x = checkpoint(block, x, cos, sin, use_reentrant=False) if checkpointing else block(x, cos, sin)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    return Model()


def set_sdpa_backend(name):
    """Global SDPA switches (read when torch.compile traces the model)."""
    import torch
    for backend in ("flash", "cudnn", "mem_efficient", "math"):
        getattr(torch.backends.cuda, f"enable_{backend}_sdp")(backend == name)


def time_sdpa(name, batch, heads, kv, seq, hd, reps=10):
    """Median ms of one causal SDPA forward + backward, or None when the
    backend cannot run this shape."""
    import torch
    import torch.nn.functional as F
    set_sdpa_backend(name)
    native_gqa = name != "cudnn"
    kvh = kv if native_gqa else heads
    q = torch.randn(batch, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, kvh, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)

    def step():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != heads).backward(g)

    try:
        times = cuda_times(step, warmup=3, reps=reps)
    except RuntimeError as e:  # "No available kernel" and kin
        print(f"sdpa {name}: unavailable at this shape ({str(e).splitlines()[0]})", file=sys.stderr)
        return None
    return statistics.median(times)


def cuda_times(fn, warmup, reps):
    import torch
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def pick_sdpa(args, m):
    """--sdpa best: time both backends at this run's attention shape."""
    if args.sdpa != "best":
        return args.sdpa, {}
    hd = m["d_model"] // m["n_heads"]
    timed = {b: time_sdpa(b, args.batch, m["n_heads"], m["n_kv_heads"], args.seq, hd) for b in ("flash", "cudnn")}
    usable = {b: t for b, t in timed.items() if t is not None}
    if not usable:
        sys.exit("neither the flash nor the cuDNN SDPA backend runs this shape")
    return min(usable, key=usable.get), timed


def make_optimizer(args, model, opt_cfg):
    import torch
    lr = args.lr if args.lr is not None else opt_cfg.get("lr", 1e-3)
    wd = args.weight_decay if args.weight_decay is not None else opt_cfg.get("weight_decay", 0.0)
    betas = (opt_cfg.get("beta1", 0.9), opt_cfg.get("beta2", 0.95))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if args.optim == "adamw8bit":
        import bitsandbytes as bnb  # checked importable in main()
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=1e-8), "bitsandbytes AdamW8bit " + bnb.__version__
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=True), "torch AdamW fused"


def run_between(cmd, repeat, tag):
    """Runs the other engine (one JSON line on its stdout) and echoes that
    line tagged with the workload and repeat."""
    out = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(json.dumps({"engine": "between", "workload": tag, "command": cmd, "repeat": repeat, "error": f"exit {out.returncode}, no JSON line"}), flush=True)
        return
    rec = json.loads(lines[-1])
    rec.update(workload=tag, repeat=repeat)
    print(json.dumps(rec), flush=True)


def summary_of(times):
    med = statistics.median(times)
    return {"median_step_ms": med, "min_step_ms": min(times), "max_step_ms": max(times),
            "spread": (max(times) - min(times)) / med, "step_ms": times}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2-124m", help="a ferrotron preset: gpt2-124m, llama-1b, llama3-8b, ...")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps, the first compiles")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per block")
    ap.add_argument("--repeats", type=int, default=1, help="timed blocks, one JSON line each")
    ap.add_argument("--between", default=None, help="shell command run before each timed block (the other engine)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--optim", choices=["adamw", "adamw8bit"], default="adamw")
    ap.add_argument("--sdpa", choices=["best", "flash", "cudnn"], default="best")
    ap.add_argument("--no-compile", action="store_true", help="eager (for debugging only)")
    ap.add_argument("--lr", type=float, default=None, help="default: the preset's")
    ap.add_argument("--weight-decay", type=float, default=None, help="default: the preset's")
    ap.add_argument("--tag", default="", help="copied into every JSON line as 'workload'")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--summarize", metavar="JSONL", help="print a markdown table of a side_by_side_strong.sh run and exit")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    import torch

    m, opt_cfg = load_preset(args.preset)
    base = {"engine": "pytorch-strong", "workload": args.tag, "preset": m["preset"], "batch_size": args.batch, "seq_len": args.seq,
            "checkpointing": args.checkpointing}
    if args.seq > m["max_seq_len"]:
        sys.exit(f"--seq {args.seq} is above {m['preset']}'s max_seq_len {m['max_seq_len']}")
    if args.optim == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # not on the GPU machine unless carried (bench/README.md)
            print(json.dumps({**base, "optimizer": "bitsandbytes AdamW8bit", "skipped": f"bitsandbytes not importable: {e}"}))
            return
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("high")  # TF32 for anything left in fp32
    sdpa, sdpa_ms = pick_sdpa(args, m)
    set_sdpa_backend(sdpa)
    with torch.device("cuda"):  # built and initialized on the GPU (an 8B model in fp32 is 32 GB)
        model = build_model(m, args.seq, sdpa, args.checkpointing)
    opt, opt_name = make_optimizer(args, model, opt_cfg)
    loss_fn = model if args.no_compile else torch.compile(model)
    vocab = m["vocab_size"]
    gen = torch.Generator(device="cuda").manual_seed(args.seed)

    def step():
        x = torch.randint(0, vocab, (args.batch, args.seq + 1), device="cuda", generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    try:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t0
        fpt = flops_per_token(m, args.seq)
        for repeat in range(1, args.repeats + 1):
            if args.between:
                torch.cuda.empty_cache()  # room for the other engine
                run_between(args.between, repeat, args.tag)
            if args.between:
                step()  # one untimed step after the other engine ran
            torch.cuda.reset_peak_memory_stats()
            losses = []
            times = cuda_times(lambda: losses.append(step()), warmup=0, reps=args.steps)
            s = summary_of(times)
            tps = args.batch * args.seq / (s["median_step_ms"] / 1e3)
            print(json.dumps({
                **base, "repeat": repeat, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "compiled": not args.no_compile, "precision": "fp32 master weights, bf16 autocast", "optimizer": opt_name,
                "sdpa": sdpa, "sdpa_fwd_bwd_ms": sdpa_ms, "params": sum(p.numel() for p in model.parameters()),
                "flops_per_token": fpt, **s, "tokens_per_s": tps, "mfu": tps * fpt / PEAK_BF16,
                "peak_mem_bytes": torch.cuda.max_memory_allocated(), "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                "warmup_s": warmup_s, "losses": [float(x) for x in losses],
            }), flush=True)
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({**base, "error": "out of GPU memory", "detail": str(e).splitlines()[0]}), flush=True)
        sys.exit(1)


def summarize(path):
    """Markdown table: per workload, each engine's median tokens/s over its
    repeats with the range, the ratio of medians, peak memory."""
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    by = {}
    for r in rows:
        if "tokens_per_s" in r:
            by.setdefault(r.get("workload", "?"), {}).setdefault(r["engine"], []).append(r)
    print("| workload | ferrotron tok/s (median [min–max], n) | strong torch tok/s (median [min–max], n) | ratio | peak GB ferrotron / torch | torch SDPA |")
    print("|---|---|---|---|---|---|")
    for w, engines in by.items():
        def cell(e):
            rs = engines.get(e, [])
            if not rs:
                return "—", None, None
            t = [r["tokens_per_s"] for r in rs]
            return f"{statistics.median(t):,.0f} [{min(t):,.0f}–{max(t):,.0f}], {len(t)}", statistics.median(t), max(r["peak_mem_bytes"] for r in rs) / 1e9
        (fc, fm, fg), (tc, tm, tg) = cell("ferrotron"), cell("pytorch-strong")
        ratio = f"{fm / tm:.2f}×" if fm and tm else "—"
        mem = f"{fg:.1f} / {tg:.1f}" if fg and tg else "—"
        sdpa = next((r.get("sdpa", "") for r in engines.get("pytorch-strong", [])), "")
        print(f"| {w} | {fc} | {tc} | {ratio} | {mem} | {sdpa} |")
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"\n{r.get('workload', '?')} {r['engine']}: {r.get('skipped') or r.get('error')}")


if __name__ == "__main__":
    main()
