#!/usr/bin/env bash
# GPU call 2 of 2026-12-02 (one nvidia-h200): every CUDA test after the
# merges of HF import (rope scaling, 128k vocabulary, Llama 3.2 fixture)
# and offload, the offload CUDA test, then bench/hf_generate_check.sh
# (greedy tokens vs transformers). .dev/ from bench/stage_binaries.sh.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
./.dev/cuda_ops --test-threads=1 > $OUT/cuda_ops.log 2>&1; grep -E "test result|FAILED|panicked" $OUT/cuda_ops.log | head -5
./.dev/cuda_optim > $OUT/cuda_optim.log 2>&1; grep -E "test result|FAILED|panicked" $OUT/cuda_optim.log | head -5
./.dev/cuda_model --test-threads=1 --nocapture > $OUT/cuda_model.log 2>&1; grep -E "test result|FAILED|panicked" $OUT/cuda_model.log | head -5
./.dev/cuda_offload --nocapture > $OUT/cuda_offload.log 2>&1; grep -E "test |test result|FAILED|panicked|max|diff|loss" $OUT/cuda_offload.log | head -20
python3 bench/hf_generate_check.py --ferrotron .dev/ferrotron --work /tmp/hfgen --out "$OUT" > $OUT/hf_generate_check.log 2>&1; grep -v '^Loading weights\|^Writing' $OUT/hf_generate_check.log | tail -25
