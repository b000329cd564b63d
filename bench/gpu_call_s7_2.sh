#!/usr/bin/env bash
# Session 7, call 2 (issue 14): the largest model, 121 layers at llama3-8b
# width (27.44B), three tiers (offload.optimizer=nvme, gpu_gb 60, host_gb
# 85), 8-bit AdamW, grad_clip 0, 1x2048, block checkpointing: 1 warm-up + 2
# timed steps for the steady step, GPU busy fraction, PCIe and disk
# bandwidth, and the start-up time of the one-draw-per-unit start-up.
# Output in $OUT/call2.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r2; mkdir -p $R
trap 'tar czf $OUT/call2.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; } > $R/gpu.txt
OUT=$R timeout $((590 - SECONDS)) python3 bench/offload_max_params.py --engines mixed --layers mixed=121 --host-gb 85 --gpu-gb 60 \
  --optimizer adamw8bit --nvme-path /tmp/ft_nvme --steps 2 --timeout $((580 - SECONDS)) --seconds $((585 - SECONDS)) | cut -c1-1500
echo "largest done at ${SECONDS}s"
