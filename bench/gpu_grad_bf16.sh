#!/usr/bin/env bash
# bf16 gradients (train.grad_dtype = bf16, issue 15), two parts (one
# device call each, both fit 10 minutes):
#   tests  the CUDA tests: the new parity test, the 20-step curves, then
#          the suites whose kernels changed (AdamW, sum_squares, embedding)
#   8b     llama3-8b 1x4096, 8-bit AdamW, ZeRO stage 3 in one process,
#          logits 1024 rows at a time: measured peak memory against
#          `ferrotron info`'s estimate, speed, losses, for
#            lean_fp32       block checkpointing, attention recomputed (today's row)
#            lean_bf16       the same with bf16 gradients
#            keepattn_bf16   bf16 gradients, attention outputs kept (no attention re-run)
#            recompute_bf16  bf16 gradients, no block checkpointing (norms, MLP activation recomputed)
#          `info`: 78.23, 63.27, 64.26, 73.43 GiB (84.0, 67.9, 69.0, 78.8 GB);
#          PyTorch + bitsandbytes measured 80.8 GB (checkpointing).
#
# Stage here: TESTS="cuda_ops cuda_grad_bf16 cuda_model cuda_optim" bash bench/stage_binaries.sh
# Run on one nvidia-h200 (carry [".dev"]):
#   bash bench/gpu_grad_bf16.sh tests     # ~6 min
#   bash bench/gpu_grad_bf16.sh 8b        # ~4 min (8B init ~30 s per run)
# Output ($OUT, default /tmp/gradbf16): tests.txt, table.md, *.log, <name>.json, <name>.err.
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

# One test executable under a deadline: its result lines.
t() {  # NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
  grep -hE "test result|panicked|FAILED|bf16 grads|largest relative gap" "$OUT/$name.log" | cut -c1-240 | head -40
}

tests() {
  t cuda_ops_bf16 60 ./.dev/cuda_ops bf16_gradient --nocapture
  t cuda_grad_bf16 120 ./.dev/cuda_grad_bf16 --nocapture --test-threads 1
  t cuda_ops 150 ./.dev/cuda_ops --test-threads 1
  t cuda_optim 60 ./.dev/cuda_optim --test-threads 1
  t cuda_model 60 ./.dev/cuda_model --test-threads 1
}

eight_b() {
  local base="--set device=cuda --set model.preset=llama3-8b --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --set dist.zero_stage=3 --set train.logits_chunk=1024 --set train.checkpoint_keep_attention=false --warmup 2 --steps 5"
  declare -A extra=(
    [lean_fp32]=""
    [lean_bf16]="--set train.grad_dtype=bf16"
    [keepattn_bf16]="--set train.grad_dtype=bf16 --set train.checkpoint_keep_attention=true"
    [recompute_bf16]="--set train.grad_dtype=bf16 --set train.checkpoint_layers=false --set train.recompute=true"
  )
  for name in lean_fp32 lean_bf16 keepattn_bf16 recompute_bf16; do
    timeout 130 $F bench train $base ${extra[$name]} > "$OUT/$name.json" 2> "$OUT/$name.err" || echo "$name failed: $(tail -2 "$OUT/$name.err")"
  done
  python3 bench/grad_bf16_table.py "$OUT"
}

for part in "${@:-tests}"; do
  case $part in
    tests) tests | tee "$OUT/tests.txt" ;;
    8b) eight_b | tee "$OUT/table.md" ;;
    *) echo "unknown part $part: use tests or 8b" >&2; exit 2 ;;
  esac
done
