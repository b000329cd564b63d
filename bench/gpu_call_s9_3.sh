#!/usr/bin/env bash
# Session 9, call 3 (issue 15): the llama-1b rows at no more peak memory
# than PyTorch's, side by side with the strong baseline, 2 repeats each:
# 1x32768 with checkpointing, lean (ZeRO stage 3 in one process + bf16
# gradients, attention output kept) and memory-matched (also attention
# re-run with its block, logits 2048 rows at a time); 4x2048 with bf16
# gradients. Output in $OUT/call3/.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=$OUT/call3; mkdir -p $R
OUT=$R/strong REPEATS=2 DEADLINE_S=540 timeout 550 bash bench/side_by_side_strong.sh llama1b-1x32768-ckpt-lean llama1b-1x32768-ckpt-matched llama1b-4x2048-bf16grads > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
