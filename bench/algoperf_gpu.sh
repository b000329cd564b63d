#!/usr/bin/env bash
# Issue 16 on one H200, in ONE device call (≤ 10 min): the eight optimizers and
# AutoLRS under external tuning with equal budgets, time to target, profiles, scores.
#   1. data: bench/algoperf_data.sh all (code + prose corpora from the machine's
#      Python installation, made in parallel; ~1-2 min)
#   2. ferrotron algoperf run: workloads llama60m-code + llama60m-prose (400 steps of
#      16×256 tokens each, target = AdamW-defaults' validation loss at the budget's end),
#      submissions = workloads/submissions.toml (adamw adamw8bit lion apollo apollo_mini
#      frugal muon cosmos, each TRIALS trials: defaults + Halton points; adamw-autolrs:
#      one trial), PARALLEL trials at once on the one GPU, solo step times measured
#      first (--calibrate: time to target = steps × solo step time, because shared-GPU
#      wall times depend on the neighbours), stopped at the deadline (trials 0..k that
#      every submission finished are scored: equal budgets)
#   3. $OUT: harness.txt (log + scores), report.md, profiles_external.png,
#      profiles_self.png, algoperf.tar.gz (every trial's config, metrics.jsonl, logs,
#      autolrs.png; no checkpoints), data.txt, device.txt
# Env: WORKLOADS (workload files, default the two llama-60m ones; add
#      workloads/gpt2-124m-code.toml in a second call), TRIALS (3), PARALLEL (10),
#      BUDGET_S (whole script, default 560), ONLY (submission names, comma-separated),
#      SKIP_DATA=1 (dry runs on a CPU with the cpu-* workloads).
# Binary: .dev/ferrotron (bench/stage_binaries.sh), carried.
set -u
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
START=$(date +%s)
B=${FERROTRON:-./.dev/ferrotron}
OUT=${OUT:-bench/results/algoperf_out}
mkdir -p "$OUT" runs
WORKLOADS=${WORKLOADS:-"workloads/llama60m-code.toml workloads/llama60m-prose.toml"}
TRIALS=${TRIALS:-3} PARALLEL=${PARALLEL:-10} BUDGET_S=${BUDGET_S:-560}
AP=runs/algoperf
{ date -u +%FT%TZ; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; nproc; } > "$OUT/device.txt"
if [ -z "${SKIP_DATA:-}" ]; then
  FERROTRON=$B bash bench/algoperf_data.sh all > "$OUT/data.txt" 2>&1
  ls -la data/algoperf >> "$OUT/data.txt"
fi
LEFT=$(( BUDGET_S - ($(date +%s) - START) - 25 ))
echo "data ready after $(( $(date +%s) - START )) s; harness time limit ${LEFT} s" | tee -a "$OUT/device.txt"
ARGS=()
for w in $WORKLOADS; do ARGS+=(--workload "$w"); done
[ -n "${ONLY:-}" ] && ARGS+=(--only "$ONLY")
# Trials are single-GPU processes sharing GPU 0; their host threads stay few.
RAYON_NUM_THREADS=2 timeout $(( LEFT + 20 )) "$B" algoperf run "${ARGS[@]}" --trials "$TRIALS" --parallel "$PARALLEL" \
  --calibrate --time-limit "$LEFT" --out "$AP" > "$OUT/harness.txt" 2>&1
echo "harness exit $? after $(( $(date +%s) - START )) s" >> "$OUT/harness.txt"
cp "$AP/report.md" "$AP"/profiles_*.png "$OUT/" 2>/dev/null
tar -C runs --exclude='checkpoints' --exclude='loss.png' -czf "$OUT/algoperf.tar.gz" algoperf
echo "done after $(( $(date +%s) - START )) s" >> "$OUT/harness.txt"
