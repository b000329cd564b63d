#!/usr/bin/env bash
# Final GPU session: every CUDA op (incl. optimizer kernels) vs the CPU, the
# whole-model checks, GPT-2 124M side by side, and each optimizer training
# the tiny model on the GPU. Binaries in .dev/ (see bench/gpu_bench_gpt2.sh).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
J=$OUT/bench.jsonl
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
./.dev/cuda_ops --test-threads=1 --nocapture > $OUT/cuda_ops.log 2>&1; grep -E "test result|FAILED|panicked" $OUT/cuda_ops.log
python3 bench/hf_logits_fixtures.py /tmp/hf > $OUT/cuda_model.log 2>&1
FERROTRON_HF_FIXTURES=/tmp/hf ./.dev/cuda_model --test-threads=1 --nocapture >> $OUT/cuda_model.log 2>&1; grep -E 'test result|max.logit|panicked' $OUT/cuda_model.log
G="--set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024"
$B bench train $G --warmup 3 --steps 10 --export-init /tmp/g124 | tee -a $J
python3 bench/torch_train.py --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 5 --steps 10 --compile 2>/dev/null | tail -1 | tee -a $J
$B bench train $G --warmup 3 --steps 10 | tee -a $J
$B bench train $G --warmup 2 --steps 3 --profile > $OUT/profile_gpt2.json
for o in adamw adamw8bit lion apollo_mini frugal muon cosmos; do
  echo "== $o" >> $OUT/optimizers.log
  $B train --set device=cuda --set optimizer.name=$o --set train.steps=100 --set train.eval_every=50 --set train.samples=0 --set run.progress=false --set run.dir=/tmp/runs --set run.name=$o >> $OUT/optimizers.log 2>&1
done
$B train --set device=cuda --set optimizer.name=apollo --set optimizer.rank=64 --set train.steps=100 --set train.eval_every=50 --set train.samples=0 --set run.progress=false --set run.dir=/tmp/runs --set run.name=apollo >> $OUT/optimizers.log 2>&1
grep -E "^==|final validation|error" $OUT/optimizers.log
