#!/usr/bin/env bash
# Checkpoint overhead on one H200 (issue 17's goal: two-stage checkpoints
# cost < 5% of step time at one checkpoint per 100 steps).
#
# llama-1b, 4 x 2048 tokens per step (recompute on, as bench/gpu_bench_llama.sh:
# ~160 ms a step), 120 steps, three runs: no checkpoint in the window
# (train.ckpt_every=0), async (train.ckpt_every=100), sync (the same with
# train.async_checkpoint=false). Every run also saves after step 120 (a run
# always saves at its end); that save is outside the measured window.
#
# Measured window: steps 21..120 (100 steps; compilation and warm-up before),
# which hold exactly one checkpoint (after step 100). Per run:
#   window_ms = sum of step_ms over the window + ckpt_block_ms of the step-100
#               save (the time the loop was blocked: host copy, or the whole
#               synchronous save)
#   overhead  = window_ms / window_ms(no checkpoint) - 1
# so the background write's interference with steps 101..120 counts too. Not
# counted: the one-batch forward pass that checks the weights before any save
# (trainer.rs weights_give_finite_loss, ~1/3 of a step, < 0.4% here).
# Also printed: ckpt_write_ms, which must stay below 100 steps' time, or the
# next save waits for it (then the overhead is larger than this window shows).
#
# Needs .dev/ferrotron (bench/stage_binaries.sh; carry [".dev"]). About 3-4
# minutes: three model inits, 360 steps, four writes of ~17 GB.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=${FERROTRON:-./.dev/ferrotron}
OUT=${OUT:-/tmp/ckpt_overhead}
RUNS=${RUNS:-/tmp/ckpt_overhead_runs}
mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; df -h /tmp | tail -1; } > "$OUT/gpu.txt"
common=(--set model.preset=llama-1b --set device=cuda --set data.path=builtin --set train.batch_size=4 --set train.seq_len=2048
        --set train.recompute=true --set train.steps=120 --set train.eval_every=0 --set train.eval_batches=1 --set train.samples=0
        --set train.schedule=constant --set train.warmup_steps=10 --set train.keep_ckpts=1 --set run.progress=false --set "run.dir=\"$RUNS\"")
run() { # name, extra --set pairs
  local name=$1; shift
  rm -rf "$RUNS"
  local s=$(date +%s)
  timeout 150 "$B" train "${common[@]}" --set run.name=$name "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - s )) s" | tee -a "$OUT/runs.txt"
  cp "$RUNS/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
  rm -rf "$RUNS"
}
# MODES picks the runs (default all three), e.g. MODES="none async".
for m in ${MODES:-none async sync}; do
  case $m in
    none) run none --set train.ckpt_every=0 ;;
    async) run async --set train.ckpt_every=100 --set train.async_checkpoint=true ;;
    sync) run sync --set train.ckpt_every=100 --set train.async_checkpoint=false ;;
  esac
done
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys, os
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".metrics.jsonl")
    if not os.path.exists(p):
        return None
    lines = [json.loads(l) for l in open(p) if l.strip()]
    steps = {l["step"]: l["step_ms"] for l in lines if l["kind"] == "train"}
    ckpt = {l["step"]: l for l in lines if l["kind"] == "ckpt"}
    window = [steps[s] for s in range(21, 121) if s in steps]
    if len(window) != 100:
        return None
    c = ckpt.get(100)
    block = c["ckpt_block_ms"] if c else 0.0
    return dict(mean=sum(window) / 100, window=sum(window) + block, block=block, write=c["ckpt_write_ms"] if c else None, final=ckpt.get(120))
r = {n: load(n) for n in ("none", "async", "sync")}
base = r["none"]
for n, v in r.items():
    if v is None:
        print(f"{n:6s}: no complete metrics (see {n}.log)")
        continue
    line = f"{n:6s}: mean step {v['mean']:.1f} ms over steps 21..120; window incl. blocking {v['window']/100:.1f} ms/step"
    if base and n != "none":
        line += f"; overhead {100 * (v['window'] / base['window'] - 1):+.2f}% (goal < 5% for async)"
        line += f"; step-100 save blocked {v['block']:.0f} ms, wrote in {v['write']:.0f} ms"
        line += f" ({'hidden' if v['write'] < 100 * base['mean'] else 'NOT hidden'} behind 100 steps = {100 * base['mean']:.0f} ms)"
    print(line)
EOF
