#!/usr/bin/env bash
# Session 7, call 5 (issue 15): llama3-8b 1x8192, block checkpointing, 8-bit
# AdamW against the strong PyTorch baseline with bitsandbytes AdamW8bit,
# ferrotron at the lean settings with bf16 gradients, REPEATS=1 (device time: the next call needs the rest)
# (the previous figure, 1.25x, was one repeat). Output in $OUT/call5.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r5; mkdir -p $R
trap 'tar czf $OUT/call5.tgz -C $R .' EXIT
OUT=$R/strong REPEATS=1 DEADLINE_S=365 timeout 250 bash bench/side_by_side_strong.sh llama3-8b-1x8192-ckpt-8bit-bf16grads > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
