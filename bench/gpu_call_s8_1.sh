#!/usr/bin/env bash
# Session 8, call 1 (issue 15): Nsight Compute profiles (bench/ncu_attention.sh:
# the Hopper attention kernels and llama-1b's row ops at its shapes), then the
# per-op profile of GPT-2 124M's step at 32x1024 (the missed GPT-2 target).
# Binaries carried as .devpack/pack.tar.xz. Output tarred into $OUT/call1.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r1; mkdir -p $R
trap 'tar czf $OUT/call1.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $R/gpu.txt
OUT=$R timeout 400 bash bench/ncu_attention.sh > $R/ncu_summary.txt 2>&1
echo "ncu rc=$? at ${SECONDS}s"; head -c 6000 $R/ncu_summary.txt
G="--set model.preset=gpt2 --set device=cuda"
timeout 40 ./.dev/ferrotron bench train $G --set train.batch_size=32 --set train.seq_len=1024 --warmup 3 --steps 3 --profile > $R/prof_gpt2_32x1024.txt 2>&1
echo "prof gpt2 rc=$? at ${SECONDS}s"; cut -c1-1500 $R/prof_gpt2_32x1024.txt | tail -3
