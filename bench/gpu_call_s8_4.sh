#!/usr/bin/env bash
# Session 8, call 4 (issue 15): the GQA and long-context rows against the
# strong baseline, 2 repeats each: llama3-8b 1x8192 with checkpointing, 8-bit
# AdamW (bitsandbytes AdamW8bit for PyTorch, .whl carried) and bf16
# gradients (first: its estimate is the larger), then llama-1b 1x32768 with
# checkpointing. Output in $OUT/call4.tgz. Ran as session 9's call 2
# (results/gpu_2026-12-03b.md).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r4; mkdir -p $R
trap 'tar czf $OUT/call4.tgz -C $R .' EXIT
OUT=$R/strong REPEATS=2 DEADLINE_S=585 timeout 590 bash bench/side_by_side_strong.sh llama3-8b-1x8192-ckpt-8bit-bf16grads llama1b-1x32768-ckpt > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
