#!/usr/bin/env bash
# GPU call 3 of 2026-12-02 (one nvidia-h200): after merging Ulysses and
# 1-bit Adam: the new kernels against their CPU twins (copy_strided,
# sign_compress/decompress), Ulysses and the compressed all-reduce over
# NCCL at world size 1, every optimizer (onebit_adam included) on CUDA vs
# the CPU, ZeRO at world 1, and the step speed after all merges.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
./.dev/cuda_ops --test-threads=1 > $OUT/cuda_ops.log 2>&1; grep -E "copy_strided|sign|test result|FAILED|panicked" $OUT/cuda_ops.log | head -8
./.dev/onebit cuda_kernels_and_nccl_world_1_match_the_cpu --nocapture > $OUT/onebit.log 2>&1; grep -E "test |test result|panicked" $OUT/onebit.log | head -5
./.dev/ulysses ulysses_nccl_world_1_on_gpu --nocapture > $OUT/ulysses.log 2>&1; grep -E "test |test result|panicked|max" $OUT/ulysses.log | head -5
./.dev/cuda_optim --nocapture > $OUT/cuda_optim.log 2>&1; grep -E "onebit|test result|panicked" $OUT/cuda_optim.log | head -6
./.dev/cuda_zero > $OUT/cuda_zero.log 2>&1; grep -E "test result|panicked" $OUT/cuda_zero.log | head -3
./.dev/dist_nccl > $OUT/dist_nccl.log 2>&1; grep -E "test result|panicked" $OUT/dist_nccl.log | head -3
F=./.dev/ferrotron
$F bench train --set model.preset=llama-1b --set device=cuda --set train.batch_size=4 --set train.seq_len=2048 --warmup 2 --steps 6 > $OUT/llama1b.json 2> $OUT/llama1b.err
python3 -c "import json;r=json.load(open('$OUT/llama1b.json'));print('llama-1b 4x2048',{k:r[k] for k in r if k in ('tokens_per_s','median_step_ms','peak_mem_bytes')})" || tail -3 $OUT/llama1b.err
$F info --set model.preset=llama-1b --set device=cuda --set dist.sp=4 --set dist.world=4 --set dist.zero_stage=3 --set train.batch_size=1 --set train.seq_len=131072 --set train.checkpoint_layers=true > $OUT/info_sp4.txt 2>&1; grep -E "total|longest|Ulysses" $OUT/info_sp4.txt
