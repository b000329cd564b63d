#!/usr/bin/env python3
"""Largest Llama-shaped model that trains one step on one GPU (issue 14):
PyTorch AdamW vs ferrotron GPU-only vs ferrotron offload.optimizer = cpu vs
nvme vs nvme with offload.params = nvme too (engine `nvme-params`: the bf16
weights also stream from the files, read ahead offload.prefetch units) vs
the mixed tiers (engine `mixed`: offload.optimizer = nvme with
offload.host_gb = --host-gb, the largest units resident in host memory and
the rest in files under --nvme-path; `mixed-params` streams the weights the
same way; `--gpu-gb G` (> 0) adds the device tier to `mixed`:
offload.gpu_gb = G, the largest units' fp32 master and 8-bit state kept on
the GPU and stepped there, placed before host_gb). Shape: llama3-8b's
width (d_model 4096, d_ff 14336, 32 heads, 8 kv heads, vocabulary 128256), n_layers varied; batch 1, seq 2048, activation
checkpointing per block in every engine, no gradient clipping (ferrotron's
offloaded device then holds the bf16 weights and one unit's gradients, not
a whole-model gradient; PyTorch's loop does not clip either).

PyTorch baseline: transformers LlamaForCausalLM built from a config (random
init, fp32 master weights on the GPU), bf16 autocast, SDPA, fused AdamW,
gradient checkpointing (no torch.compile: it changes speed, not the
weights/gradients/state bytes that set the limit).

For each engine its layer counts are tried in increasing order, one fresh
process per try, one step each, until one fails (out of memory, host memory
or disk refused, or the per-try timeout); the largest that trained is the
engine's result. Layer counts: `--layers 16,24,32` for every engine, or per
engine `--layers pytorch=32,36,38,40 --layers mixed=100,108,116` (repeatable;
a plain list is the default for engines not named). Each try records
params, ok, step time, GPU peak bytes, host peak RSS (the child's own
ru_maxrss, from wait4), the most bytes under --nvme-path while it ran
(sampled), wall time and the output's last lines. One JSON line per try and
one summary per engine into $OUT/offload_max_params.jsonl.

    python3 bench/offload_max_params.py --engines pytorch,mixed --layers pytorch=36,38,40 \\
        --layers mixed=100,108,116 --host-gb 95 --nvme-path /tmp/ft_nvme --timeout 300 --seconds 580
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("FERROTRON_BIN", "./target/release/ferrotron")
SHAPE = dict(d_model=4096, d_ff=14336, n_heads=32, n_kv_heads=8, vocab=128256)
ENGINES = ("pytorch", "gpu", "cpu", "nvme", "nvme-params", "mixed", "mixed-params")


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
print(json.dumps({"loss": loss.item(), "median_step_ms": 1e3 * (time.time() - t), "peak_mem_bytes": torch.cuda.max_memory_allocated(),
                  "params": sum(p.numel() for p in model.parameters())}))
'''


def command(engine, layers, a):
    if engine == "pytorch":
        return [sys.executable, "-c", TORCH, str(layers), str(a.seq)]
    sets = {
        "model.preset": "llama3-8b", "model.n_layers": layers, "model.max_seq_len": a.seq, "device": "cuda",
        "train.batch_size": 1, "train.seq_len": a.seq, "train.checkpoint_layers": "true", "optimizer.name": a.optimizer,
        "train.grad_clip": 0,
    }
    if engine == "cpu":
        sets["offload.optimizer"] = "cpu"
    if engine in ("nvme", "nvme-params", "mixed", "mixed-params"):
        sets["offload.optimizer"] = "nvme"
        sets["offload.path"] = f'"{a.nvme_path}"'
    if engine in ("nvme-params", "mixed-params"):
        sets["offload.params"] = "nvme"
    if engine in ("mixed", "mixed-params"):
        sets["offload.host_gb"] = a.host_gb
    if engine == "mixed" and a.gpu_gb > 0:
        sets["offload.gpu_gb"] = a.gpu_gb
    if a.prefetch and engine in ("nvme", "nvme-params", "mixed", "mixed-params"):
        sets["offload.prefetch"] = a.prefetch
    for spec in a.ft_set:
        target, kv = spec.split(":", 1) if ":" in spec.split("=", 1)[0] else (None, spec)
        if target in (None, engine):
            k, v = kv.split("=", 1)
            sets[k] = v
    # One step decides whether a size fits; --steps N > 1 adds a warm-up step
    # and times N more (the steady state: the first step also faults in and
    # page-locks every host buffer).
    cmd = [BIN, "bench", "train", "--warmup", "0" if a.steps == 1 else "1", "--steps", str(a.steps)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def tree_bytes(path):
    """Bytes of the files under `path` now (0 if none)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def proc_io(pid):
    """(read_bytes, write_bytes) the process has made the storage layer do
    (/proc/PID/io), or None once it is gone."""
    try:
        fields = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().splitlines())
        return int(fields["read_bytes"]), int(fields["write_bytes"])
    except (OSError, KeyError, ValueError):
        return None


def start_dmon():
    """nvidia-smi dmon (SM busy %, PCIe rx/tx MB/s, once a second) into a
    temporary file, each line prefixed by our own clock; None without it."""
    f = tempfile.TemporaryFile("w+")
    try:
        p = subprocess.Popen(["bash", "-c", "nvidia-smi dmon -s ut -d 1 | while read -r l; do echo \"$(date +%s.%N) $l\"; done"],
                             stdout=f, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    except OSError:
        return None
    return p, f


def stop_dmon(d):
    """[(time, sm %, pcie rx MB/s, pcie tx MB/s)] from start_dmon."""
    if d is None:
        return []
    p, f = d
    try:
        os.killpg(p.pid, 9)
    except OSError:
        pass
    p.wait()
    f.seek(0)
    rows, cols = [], None
    for line in f.read().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        if parts[1] == "#" and cols is None and "sm" in parts:
            cols = parts[2:]
            continue
        if parts[1] == "#" or cols is None:
            continue
        vals = dict(zip(cols, parts[1:]))
        try:
            rows.append((float(parts[0]), float(vals["sm"]), float(vals.get("rxpci", "nan")), float(vals.get("txpci", "nan"))))
        except (KeyError, ValueError):
            pass
    return rows


def steady_window(samples, io, end, seconds):
    """What the GPU, PCIe and disk did over the `seconds` before `end` (the
    moment the try printed its result: the timed steps end there)."""
    lo = end - seconds
    w = [s for s in samples if lo <= s[0] <= end]
    out = {"window_s": round(seconds, 1), "dmon_samples": len(w)}
    if w:
        out["gpu_busy_fraction"] = round(sum(s[1] for s in w) / len(w) / 100, 3)
        # dmon's rxpci is what the GPU received (host to device), txpci what it sent.
        out["pcie_h2d_gbs"] = round(sum(s[2] for s in w) / len(w) / 1e3, 2)
        out["pcie_d2h_gbs"] = round(sum(s[3] for s in w) / len(w) / 1e3, 2)
    before = [x for x in io if x[0] <= lo]
    after = [x for x in io if x[0] <= end]
    if before and after and after[-1][0] > before[-1][0]:
        dt = after[-1][0] - before[-1][0]
        out["disk_read_gbs"] = round((after[-1][1] - before[-1][1]) / dt / 1e9, 2)
        out["disk_write_gbs"] = round((after[-1][2] - before[-1][2]) / dt / 1e9, 2)
        out["disk_read_gb"] = round((after[-1][1] - before[-1][1]) / 1e9, 2)
        out["disk_write_gb"] = round((after[-1][2] - before[-1][2]) / 1e9, 2)
    return out


def run_try(cmd, timeout, nvme_path):
    """Runs one try. Returns (exit status or None on timeout, output tail,
    peak RSS bytes of the child, most bytes seen under nvme_path, dmon
    samples, /proc/PID/io samples, time the output last grew)."""
    dmon = start_dmon()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        start, disk, status, rss = time.time(), 0, None, 0
        io, size, grew = [], 0, start
        while True:
            pid, st, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                status, rss = os.waitstatus_to_exitcode(st), ru.ru_maxrss * 1024
                break
            now, sample = time.time(), proc_io(p.pid)
            if sample:
                io.append((now, *sample))
            if os.fstat(log.fileno()).st_size != size:
                size, grew = os.fstat(log.fileno()).st_size, now
            disk = max(disk, tree_bytes(nvme_path))
            if time.time() - start > timeout:
                os.killpg(p.pid, 9)
                _, _, ru = os.wait4(p.pid, 0)
                rss = ru.ru_maxrss * 1024
                break
            time.sleep(0.25)
        p.returncode = status if status is not None else -9
        if os.fstat(log.fileno()).st_size != size:  # the last output came after the last poll
            grew = time.time()
        log.seek(0)
        text = log.read()
    return status, text, rss, disk, stop_dmon(dmon), io, grew


def result_json(text):
    """The last JSON object line of a try's output (bench train's result,
    or the PyTorch script's), else None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    # bench train prints one pretty-printed object: parse from its first "{".
    i = text.find("{")
    if i >= 0:
        try:
            return json.loads(text[i:])
        except ValueError:
            pass
    return None


def layer_lists(specs, engines):
    """`--layers` values → {engine: [layers]}."""
    default, per = None, {}
    for s in specs:
        if "=" in s:
            e, lst = s.split("=", 1)
            if e not in ENGINES:
                raise SystemExit(f"--layers {s}: unknown engine {e} (use one of {', '.join(ENGINES)})")
            per[e] = [int(x) for x in lst.split(",") if x]
        else:
            default = [int(x) for x in s.split(",") if x]
    default = default or [16, 24, 32, 40, 48, 56, 64, 72, 80, 96]
    return {e: per.get(e, default) for e in engines}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="pytorch,gpu,cpu,nvme")
    ap.add_argument("--layers", action="append", default=[], help="LIST for every engine, or ENGINE=LIST (repeatable)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--optimizer", default="adamw8bit", help="ferrotron's optimizer.name (adamw or adamw8bit)")
    ap.add_argument("--nvme-path", default="/tmp/ferrotron_nvme")
    ap.add_argument("--host-gb", type=float, default=95.0, help="offload.host_gb of the mixed engines (10^9 bytes)")
    ap.add_argument("--gpu-gb", type=float, default=0.0, help="offload.gpu_gb of the mixed engine (10^9 bytes of device memory "
                    "for units whose master + state stay on the GPU; 0: none; needs offload.params = none, so not mixed-params)")
    ap.add_argument("--prefetch", type=int, default=0, help="offload.prefetch of the nvme engines (0: ferrotron's default); "
                    "each unit less in the read-ahead window frees 2 units' master + state of host memory")
    ap.add_argument("--ft-set", action="append", default=[], help="more ferrotron settings: KEY=VAL for every ferrotron "
                    "engine or ENGINE:KEY=VAL for one (repeatable; later wins), e.g. gpu:train.grad_dtype=bf16")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per ferrotron try (1: one step, no warm-up; N > 1: "
                    "one warm-up step, then N timed; the try's line then has the GPU busy fraction, PCIe and disk "
                    "bandwidth over the timed steps)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per try")
    ap.add_argument("--seconds", type=int, default=580, help="total budget")
    a = ap.parse_args()
    engines = a.engines.split(",")
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"--engines: unknown engine {e} (use {', '.join(ENGINES)})")
    lists = layer_lists(a.layers, engines)
    out_dir = os.environ.get("OUT", ".")
    out = open(os.path.join(out_dir, "offload_max_params.jsonl"), "a")

    def emit(obj):
        print(json.dumps(obj), flush=True)
        out.write(json.dumps(obj) + "\n")
        out.flush()

    start = time.time()
    for engine in engines:
        best, first_fail = None, None
        for layers in sorted(lists[engine]):
            left = a.seconds - (time.time() - start)
            if left < 30:
                emit({"engine": engine, "layers": layers, "skipped": "out of total time"})
                break
            # A killed try may leave its scratch folder: not this try's disk.
            shutil.rmtree(a.nvme_path, ignore_errors=True)
            t = time.time()
            status, text, rss, disk, dmon, io, printed = run_try(command(engine, layers, a), min(a.timeout, left), a.nvme_path)
            ok = status == 0
            res = result_json(text) if ok else None
            line = {
                "engine": engine, "layers": layers, "params": params(layers), "ok": ok,
                "exit": status if status is not None else "timeout", "wall_s": round(time.time() - t, 1),
                "step_ms": res.get("median_step_ms") if res else None,
                "gpu_peak_bytes": res.get("peak_mem_bytes") if res else None,
                "host_peak_rss_bytes": rss, "disk_peak_bytes": disk,
                "params_reported": res.get("params") if res else None,
                "tail": [l[:400] for l in text.strip().splitlines()[-3:]],
            }
            # The start-up's progress lines and the slow steps' lines: how far
            # a try stopped by its timeout got, and how fast.
            line["progress"] = [l[:200] for l in text.splitlines() if l.startswith(("offload start-up:", "bench: step"))]
            startup = re.search(r"offload start-up: \d+ parameters placed in ([\d.]+) s \((.*)\)", text)
            if startup:
                line["startup_s"], line["startup_phases"] = float(startup.group(1)), startup.group(2)
            if res and res.get("offload"):
                line["offload"] = res["offload"][-1]
            if res and res.get("step_ms"):
                line["step_ms_all"] = res["step_ms"]
                line["tokens_per_s"] = res.get("tokens_per_s")
                line["mfu"] = res.get("mfu")
                line["steady"] = steady_window(dmon, io, printed, sum(res["step_ms"]) / 1e3)
            emit(line)
            if not ok:
                first_fail = layers
                break
            best = line
        shutil.rmtree(a.nvme_path, ignore_errors=True)
        emit({"engine": engine, "summary": True, "max_layers": best["layers"] if best else None,
              "max_params": best["params"] if best else None, "first_failed_layers": first_fail,
              "step_ms": best["step_ms"] if best else None, "gpu_peak_bytes": best["gpu_peak_bytes"] if best else None,
              "host_peak_rss_bytes": best["host_peak_rss_bytes"] if best else None,
              "disk_peak_bytes": best["disk_peak_bytes"] if best else None})


if __name__ == "__main__":
    main()
