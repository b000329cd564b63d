#!/usr/bin/env bash
# Run on the GPU machine from the repo root with the built binaries in .dev/
# (ferrotron, and the cuda_ops / cuda_model test executables). One device call: parity tests, HF logits check, GPT-2 124M side-by-side bench.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
git rev-parse HEAD 2>/dev/null | tee -a $OUT/gpu.txt
date -u | tee -a $OUT/gpu.txt
(time ./.dev/cuda_ops --test-threads=1) > $OUT/cuda_ops.log 2>&1; tail -5 $OUT/cuda_ops.log
python3 bench/hf_logits_fixtures.py /tmp/hf > $OUT/cuda_model.log 2>&1
FERROTRON_HF_FIXTURES=/tmp/hf ./.dev/cuda_model --test-threads=1 --nocapture >> $OUT/cuda_model.log 2>&1; tail -12 $OUT/cuda_model.log
B=./.dev/ferrotron
for i in 1; do
$B bench train --set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024 --warmup 3 --steps 10 --export-init /tmp/g124 2>&1 | tee -a $OUT/bench_gpt2.jsonl
python3 bench/torch_train.py --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 3 --steps 10 2>&1 | tail -1 | tee -a $OUT/bench_gpt2.jsonl
python3 bench/torch_train.py --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 5 --steps 10 --compile 2>&1 | tail -1 | tee -a $OUT/bench_gpt2.jsonl
done
