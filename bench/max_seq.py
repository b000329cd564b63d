#!/usr/bin/env python3
"""Longest sequence that trains on one GPU (issue 3): llama-1b, batch 1,
ferrotron with train.checkpoint_layers=true and the attention re-run
(checkpoint_keep_attention=false: its least memory) vs PyTorch with activation
checkpointing (bench/torch_train.py --checkpointing).

Doubling the length until a step fails costs too much device time near the
limit, so for each engine:
  1. two probes, one warm step each at 16384 and 32768 tokens: peak memory
     and step time;
  2. the memory limit predicted linearly (with flash attention and
     checkpointing the activations grow linearly in the sequence) to the
     GPU's memory, and the step time predicted as a*T + b*T^2 (attention is
     quadratic);
  3. one step at the predicted limit, rounded down to a multiple of --step
     (walking down by --step while steps fail to fit), then climbing by
     --step while steps still fit, until one fails (or time runs out).
A step near the memory limit can take longer than the time left (ferrotron's
limit is predicted beyond 500k tokens, a step there ~10 minutes): then the
length tried is the longest whose predicted step fits the time, and the
result says `limited_by: time` — that length is verified to fit, the memory
limit stays a prediction.

One JSON line per attempt, then a summary line per engine, into
$OUT/max_seq.jsonl. Binary at .dev/ferrotron.

  python3 bench/max_seq.py --engines pytorch --seconds 540
"""
import argparse
import json
import os
import subprocess
import time

HF_DIR = "/tmp/l1b_maxseq"
BIN = os.environ.get("FERROTRON_BIN", "./.dev/ferrotron")
LLAMA = ["--set", "model.preset=llama-1b", "--set", "device=cuda", "--set", "train.batch_size=1"]
PROBES = (16384, 32768)


def command(engine, seq, warmup):
    if engine == "ferrotron":
        return [BIN, "bench", "train", *LLAMA, "--set", f"model.max_seq_len={seq}", "--set", f"train.seq_len={seq}",
                "--set", "train.checkpoint_layers=true", "--set", "train.checkpoint_keep_attention=false",
                "--warmup", str(warmup), "--steps", "1"]
    return ["python3", "bench/torch_train.py", "--hf-dir", HF_DIR, "--batch", "1", "--seq", str(seq),
            "--warmup", str(warmup), "--steps", "1", "--checkpointing"]


class Session:
    def __init__(self, out, seconds):
        self.out = out
        self.seconds = seconds

    def log(self, record):
        with open(os.path.join(self.out, "max_seq.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record)[:240], flush=True)

    def attempt(self, engine, seq, warmup, deadline):
        """One run; returns its JSON result (with wall_s) or None if it failed."""
        left = deadline - time.time()
        start = time.time()
        try:
            p = subprocess.run(command(engine, seq, warmup), capture_output=True, text=True, timeout=max(left, 1))
            lines = [l for l in p.stdout.splitlines() if "tokens_per_s" in l]
            if p.returncode == 0 and lines:
                result = json.loads(lines[-1])
                result["wall_s"] = time.time() - start
                self.log({k: result.get(k) for k in ("engine", "seq_len", "median_step_ms", "tokens_per_s", "peak_mem_bytes",
                                                     "peak_reserved_bytes", "wall_s")})
                return result
            why = (p.stderr.strip().splitlines() or ["(no error output)"])[-1][:300]
        except subprocess.TimeoutExpired:
            why = "stopped at this engine's time limit (not a failure to fit)"
        self.log({"engine": engine, "seq_len": seq, "failed": why, "wall_s": time.time() - start})
        return None


def peak(result):
    # PyTorch's caching allocator holds more than it hands out: count what it reserved.
    return max(result.get("peak_mem_bytes", 0), result.get("peak_reserved_bytes") or 0)


def predict(probes, gpu_bytes, step):
    """(memory limit, step-time model seconds(T)) from the two probes."""
    (s1, r1), (s2, r2) = probes
    per_token = (peak(r2) - peak(r1)) / (s2 - s1)
    mem_limit = int((s2 + (gpu_bytes - peak(r2)) / per_token) // step * step)
    t1, t2 = r1["median_step_ms"] / 1e3, r2["median_step_ms"] / 1e3
    # t(T) = a T + b T^2 through both probes (b >= 0: noise must not make it sub-linear).
    b = max((t2 * s1 - t1 * s2) / (s1 * s2 * (s2 - s1)), 0.0)
    a = (t1 - b * s1 * s1) / s1
    # Process start, allocation and compilation: the probe's wall time beyond its two steps.
    overhead = max(r2["wall_s"] - 2 * t2, 0.0)
    return mem_limit, per_token, lambda t: overhead + a * t + b * t * t


def longest_in_time(seconds_of, left, step, upto):
    seq = step
    while seq + step <= upto and 1.2 * seconds_of(seq + step) < left:
        seq += step
    return seq


def run_engine(s, engine, gpu_bytes, step):
    deadline = time.time() + s.seconds
    probes = []
    for seq in PROBES:
        r = s.attempt(engine, seq, 1, deadline)
        if r is None:
            s.log({"engine": engine, "max_seq_fits": None, "note": f"the probe at {seq} failed"})
            return
        probes.append((seq, r))
    mem_limit, per_token, seconds_of = predict(probes, gpu_bytes, step)
    seq = min(mem_limit, longest_in_time(seconds_of, deadline - time.time(), step, mem_limit))
    limited_by = "memory" if seq == mem_limit else "time"
    best = PROBES[-1]
    while seq > best and time.time() < deadline:
        if s.attempt(engine, seq, 0, deadline) is not None:
            best = seq
            break
        seq -= step
    # The prediction is linear; the allocator is not: when memory was the
    # limit, climb by one step while steps fit (and time is left) so the
    # answer is the last length that trained, with the next one shown to fail.
    failed_above = None
    while best > PROBES[-1] and limited_by == "memory" and 1.2 * seconds_of(best + step) < deadline - time.time():
        if s.attempt(engine, best + step, 0, deadline) is None:
            failed_above = best + step
            break
        best += step
    s.log({"engine": engine, "max_seq_fits": best, "limited_by": limited_by, "predicted_memory_limit": mem_limit,
           "bytes_per_token": per_token, "first_failure_above": failed_above, "resolution": step,
           "gpu_bytes": gpu_bytes})


def run_lengths(s, engine, lengths):
    """Continue an earlier call's search: one step at each length, in order,
    until one fails; summary as run_engine's (no probes, no prediction)."""
    deadline = time.time() + s.seconds
    best, failed = None, None
    for seq in lengths:
        if s.attempt(engine, seq, 0, deadline) is None:
            failed = seq
            break
        best = seq
    s.log({"engine": engine, "lengths_tried": lengths, "max_seq_fits": best, "first_failure": failed})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="pytorch ferrotron", help="space-separated, in order")
    ap.add_argument("--seconds", type=float, default=540, help="per engine")
    ap.add_argument("--step", type=int, default=8192, help="resolution of the answer")
    ap.add_argument("--lengths", default="", help="comma-separated: skip the probes and try only these, in order "
                    "(to continue a search an earlier call ran out of time for)")
    args = ap.parse_args()
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    out = os.environ.get("OUT", ".")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    mib = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    gpu_bytes = int(mib) * 1024 * 1024
    if not os.path.exists(os.path.join(HF_DIR, "config.json")):
        # max_position_embeddings in the export: above any length tried here.
        subprocess.run([BIN, "bench", "train", *LLAMA, "--set", "model.max_seq_len=1048576", "--set", "train.seq_len=64",
                        "--warmup", "0", "--steps", "1", "--export-init", HF_DIR], check=True, capture_output=True)
    s = Session(out, args.seconds)
    for engine in args.engines.split():
        if args.lengths:
            run_lengths(s, engine, [int(x) for x in args.lengths.split(",")])
        else:
            run_engine(s, engine, gpu_bytes, args.step)


if __name__ == "__main__":
    main()
