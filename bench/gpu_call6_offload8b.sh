#!/usr/bin/env bash
# GPU call 6 of 2026-12-02: one offloaded training step of the llama3-8b shape
# (batch 1 x 2048, checkpointing, 8-bit AdamW on the CPU tier), timed: how long
# set-up and a step take (call 4 stopped such a try at 150 s).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader; nproc; free -g | head -2; } > $OUT/gpu.txt
S=$(date +%s)
timeout 500 ./.dev/ferrotron bench train --set model.preset=llama3-8b --set device=cuda --set train.batch_size=1 --set train.seq_len=2048 \
  --set train.checkpoint_layers=true --set offload.optimizer=cpu --set optimizer.name=adamw8bit --warmup 1 --steps 2 > $OUT/offload8b.json 2> $OUT/offload8b.err
echo "exit $? after $(( $(date +%s) - S )) s" | tee -a $OUT/offload8b.err
cat $OUT/offload8b.json; tail -5 $OUT/offload8b.err
