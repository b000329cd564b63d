#!/usr/bin/env bash
# Side-by-side training benchmarks on one GPU, in one session (run on the GPU
# machine from the repo root, with the built binary at .dev/ferrotron).
# Every line of $OUT/bench.jsonl is one engine's result (JSON).
source "$(dirname "$0")/side_by_side.sh"

# llama-1b, seq 2048.
L="--set model.preset=llama-1b --set train.batch_size=4 --set train.seq_len=2048"
ft $L --warmup 2 --steps 5 --export-init /tmp/l1b
pt --hf-dir /tmp/l1b --batch 4 --seq 2048 --warmup 3 --steps 5 --compile --lr 1e-3 --weight-decay 0
ft $L --warmup 2 --steps 5
# Recompute of norms and SwiGLU (elementwise only, no matmul): ~3.8 GB less
# activation memory (info: 12.85 -> 9.1 GiB), what keeps ferrotron under
# PyTorch's peak; torch.compile makes the same kind of choice on its own.
ft $L --set train.recompute=true --warmup 2 --steps 5
ft $L --set train.recompute=true --warmup 2 --steps 3 --profile > $OUT/profile_llama1b.json

# Long context: llama-1b at 32768 with recompute / activation checkpointing.
ft --set model.preset=llama-1b --set train.batch_size=1 --set train.seq_len=32768 --set train.recompute=true --warmup 1 --steps 2
pt --hf-dir /tmp/l1b --batch 1 --seq 32768 --warmup 1 --steps 2 --checkpointing --lr 1e-3 --weight-decay 0
