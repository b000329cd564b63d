#!/usr/bin/env bash
# Session 8, call 3 (issue 15): after the block-per-row norms, add+LayerNorm,
# RoPE, SwiGLU's fast sigmoid and the register-resident cross-entropy:
# parity (cuda_ops all, cuda_model), the per-op profiles of llama-1b 4x2048
# and GPT-2 124M 32x1024, then the strong-baseline side by side of group A
# (GPT-2 8x1024, 32x1024; llama-1b 4x2048, 8x2048), 2 repeats each.
# Output tarred into $OUT/call3.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r3; mkdir -p $R
trap 'tar czf $OUT/call3.tgz -C $R .' EXIT
timeout 120 ./.dev/cuda_ops --test-threads 1 > $R/cuda_ops.log 2>&1; echo "cuda_ops rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked" $R/cuda_ops.log | grep -v " ok$" | cut -c1-300 | head -20
timeout 60 ./.dev/cuda_model --test-threads 1 > $R/cuda_model.log 2>&1; echo "cuda_model rc=$? at ${SECONDS}s"
grep -E "test result|panicked" $R/cuda_model.log | cut -c1-300 | head -5
for shape in "llama-1b 4 2048" "gpt2-124m 32 1024"; do
  set -- $shape
  A="--set model.preset=$1 --set device=cuda --set train.batch_size=$2 --set train.seq_len=$3"
  timeout 40 ./.dev/ferrotron bench train $A --warmup 3 --steps 3 --profile > $R/prof_$1_$2x$3.txt 2>&1
  echo "prof $1 $2x$3 rc=$? at ${SECONDS}s"
done
OUT=$R/strong REPEATS=2 DEADLINE_S=$((585 - SECONDS)) timeout $((590 - SECONDS)) bash bench/side_by_side_strong.sh A > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
