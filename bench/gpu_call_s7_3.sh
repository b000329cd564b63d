#!/usr/bin/env bash
# Session 7, call 3 (issue 14): DeepSpeed 0.19.8 ZeRO-2 + offload_optimizer
# cpu (DeepSpeedCPUAdam, bf16) at the deepest llama3-8b-width shape host
# memory allows (16 B/param; the full 32 layers do not fit 128 GiB), 1x4096,
# checkpointing, 1 warm-up + 3 timed steps; then ferrotron's optimizer
# offload (fp32 AdamW, grad_clip 0) at that same shape
# (`bench/offload_speed.sh deepspeed-8b`). Output in $OUT/call3.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r3; mkdir -p $R
trap 'tar czf $OUT/call3.tgz -C $R .' EXIT
OUT=$R BUDGET_S=585 bash bench/offload_speed.sh deepspeed-8b 2>&1 | cut -c1-1200
echo "deepspeed-8b done at ${SECONDS}s"
