#!/usr/bin/env bash
# Session 9, call 4 (issue 15): the projection after the MLP writes into the
# residual stream in its matmul's epilogue (linear_residual_fwd: cuBLASLt C
# apart from D) instead of a separate add.
# 1. parity: cuda_ops linear (the new op against the CPU), cuda_model;
# 2. per-op profile + plain step of GPT-2 32x1024;
# 3. side by side with the strong baseline, 2 repeats each: GPT-2 32x1024,
#    llama-1b 4x2048, GPT-2 8x1024.
# Output in $OUT/call4/.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=$OUT/call4; mkdir -p $R
timeout 40 ./.dev/cuda_ops --test-threads 1 linear > $R/cuda_ops_linear.log 2>&1; echo "cuda_ops linear rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked" $R/cuda_ops_linear.log | cut -c1-300 | head -12
timeout 30 ./.dev/cuda_model --test-threads 1 > $R/cuda_model.log 2>&1; echo "cuda_model rc=$? at ${SECONDS}s"
grep -E "test result|panicked" $R/cuda_model.log | cut -c1-300 | head -5
A="--set model.preset=gpt2-124m --set device=cuda --set train.batch_size=32 --set train.seq_len=1024"
timeout 40 ./.dev/ferrotron bench train $A --warmup 3 --steps 3 --profile > $R/prof_gpt2-124m_32x1024.txt 2>&1
echo "gpt2 profile rc=$? at ${SECONDS}s"
OUT=$R/strong REPEATS=2 EST_PCT=80 DEADLINE_S=$((300 - SECONDS)) timeout $((310 - SECONDS)) bash bench/side_by_side_strong.sh gpt2-32x1024 llama1b-4x2048 gpt2-8x1024 > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
