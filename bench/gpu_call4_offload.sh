#!/usr/bin/env bash
# GPU call 4 of 2026-12-02 (one nvidia-h200): the largest llama3-8b-width
# model that trains one step (batch 1, seq 2048, checkpointing): PyTorch
# AdamW (transformers, fused AdamW, bf16 autocast) vs ferrotron with the
# optimizer offloaded to the CPU (8-bit AdamW). Budgets fit one call.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; df -h /tmp | tail -1; } > $OUT/gpu.txt
python3 bench/offload_max_params.py --engines pytorch --layers 28,32,36 --timeout 120 --seconds 200
python3 bench/offload_max_params.py --engines cpu --optimizer adamw8bit --layers 36,44,52 --timeout 150 --seconds 320
grep -h summary $OUT/offload_max_params.jsonl
