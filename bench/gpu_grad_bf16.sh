#!/usr/bin/env bash
# bf16 gradients (train.grad_dtype = bf16, issue 15): the CUDA tests, then
# llama3-8b 1x4096 with checkpointing and 8-bit AdamW at the lean settings
# (ZeRO stage 3 in one process, logits 1024 rows at a time, attention
# recomputed with the blocks) with fp32 and with bf16 gradients: measured
# peak memory against `ferrotron info`'s estimate, speed, losses.
# `info` estimates 78.23 GiB (84.0 GB) with fp32 gradients, 63.27 GiB
# (67.9 GB) with bf16 ones; PyTorch + bitsandbytes measured 80.8 GB.
#
# Stage here: TESTS="cuda_ops cuda_grad_bf16 cuda_model cuda_optim" bash bench/stage_binaries.sh
# Run on one nvidia-h200 (carry [".dev"]), about 6 minutes:
#   OUT=/tmp/gradbf16 bash bench/gpu_grad_bf16.sh
# Output: $OUT/summary.md (test lines and the table), $OUT/*.log, $OUT/<name>.json, $OUT/<name>.err.
# The side-by-side against PyTorch (another call, carry [".dev", ".whl"]):
#   REPEATS=2 bash bench/side_by_side_strong.sh llama3-8b-1x4096-ckpt-8bit-bf16grads
#   (the same as FT_EXTRA="--set train.grad_dtype=bf16" ... llama3-8b-1x4096-ckpt-8bit)
set -uo pipefail
export CUDA_HOME=/usr/local/cuda NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gradbf16}
mkdir -p "$OUT"
F=./.dev/ferrotron
[ -x "$F" ] || { echo "no $F: build with bench/stage_binaries.sh and carry .dev" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# Tests, each under a deadline: the new parity test first, then the 20-step
# curves, then the suites whose kernels changed (AdamW, sum_squares, embed).
t() {  # NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
  grep -hE "test result|panicked|FAILED|bf16 grads|largest relative gap" "$OUT/$name.log" | cut -c1-240 | head -40
}
{
  t cuda_ops_bf16 60 ./.dev/cuda_ops bf16_gradient --nocapture
  t cuda_grad_bf16 120 ./.dev/cuda_grad_bf16 --nocapture --test-threads 1
  t cuda_ops 150 ./.dev/cuda_ops --test-threads 1
  t cuda_optim 60 ./.dev/cuda_optim --test-threads 1
  t cuda_model 60 ./.dev/cuda_model --test-threads 1
} | tee "$OUT/tests.txt"

BASE="--set device=cuda --set model.preset=llama3-8b --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --set dist.zero_stage=3 --set train.logits_chunk=1024 --set train.checkpoint_keep_attention=false --warmup 2 --steps 5"
for g in fp32 bf16; do
  timeout 160 $F bench train $BASE --set train.grad_dtype=$g > "$OUT/lean_$g.json" 2> "$OUT/lean_$g.err" || echo "lean_$g failed: $(tail -2 "$OUT/lean_$g.err")"
done

python3 - "$OUT" <<'EOF' | tee "$OUT/table.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| llama3-8b 1x4096 lean, 8-bit AdamW | peak GB (measured) | info estimate GB | peak - estimate | tok/s | median step ms | losses |")
print("|---|---|---|---|---|---|---|")
for g in ["fp32", "bf16"]:
    lines = [l for l in (out / f"lean_{g}.json").read_text().splitlines() if l.startswith("{")]
    if not lines:
        print(f"| grad_dtype={g} | failed (see lean_{g}.err) | | | | | |")
        continue
    r = json.loads(lines[-1])
    peak, est = r["peak_mem_bytes"] / 1e9, r["estimate_bytes"] / 1e9
    losses = ", ".join(f"{x:.4f}" for x in r["losses"])
    print(f"| grad_dtype={g} | {peak:.2f} | {est:.2f} | {peak - est:+.2f} | {r['tokens_per_s']:,.0f} | {r['median_step_ms']:.1f} | {losses} |")
print("\nPyTorch + bitsandbytes AdamW8bit, same shape (bench/results/gpu_2026-12-02c.md): 80.8 GB, 6,063 tok/s.")
EOF
cat "$OUT/tests.txt" "$OUT/table.md" > "$OUT/summary.md"
