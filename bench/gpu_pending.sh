#!/usr/bin/env bash
# What the 2026-11-28 evening session built but could not run on a GPU (its
# device budget ran out), in ONE call on an nvidia-h200-x2 (~9 minutes):
#   GPU 0: the CUDA tests (ops incl. adamw_segments, every optimizer vs the
#          CPU, whole model), the optimizer-step benchmark (gpu_optim.sh),
#          then the convergence runs frugal x2 + apollo_mini lr 3e-3;
#   GPU 1: the convergence runs muon x2 + cosmos x2 (four at once), then
#          GPT-2 124M side by side and a llama-1b per-op profile if time is left.
# Needs .dev/{ferrotron,cuda_ops,cuda_optim,cuda_model} (bench/stage_binaries.sh) and .whl/site
# (carry [".dev", ".whl"]). Everything comes back in $OUT/pending.tar.gz
# plus optim.jsonl and bench.jsonl (the tool returns at most 8 files).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
OPTS="" NO_TAR=1 bash bench/convergence.sh # prepares data/py once (no runs)
( export CUDA_VISIBLE_DEVICES=0
  ./.dev/cuda_ops --test-threads=1 > $OUT/tests.log 2>&1
  ./.dev/cuda_optim --nocapture >> $OUT/tests.log 2>&1
  ./.dev/cuda_model --test-threads=1 >> $OUT/tests.log 2>&1
  bash bench/gpu_optim.sh > $OUT/gpu_optim.log 2>&1 ) &
P0=$!
( GPUS="1 1 1 1" OPTS="muon:2e-2,1e-2 cosmos:1e-4,3e-4" RUN_TIMEOUT=450 NO_TAR=1 bash bench/convergence.sh
  export CUDA_VISIBLE_DEVICES=1
  G="--set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024"
  if [ $SECONDS -lt 430 ]; then
    timeout 60 $B bench train $G --warmup 3 --steps 10 --export-init /tmp/g124 | tee -a $OUT/bench.jsonl | cut -c1-200
    timeout 90 python3 bench/torch_train.py --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 5 --steps 10 --compile 2>/dev/null | tail -1 | tee -a $OUT/bench.jsonl | cut -c1-250
    timeout 40 $B bench train $G --warmup 3 --steps 10 | tee -a $OUT/bench.jsonl | cut -c1-200
    timeout 40 $B bench train $G --warmup 2 --steps 3 --profile > $OUT/profile_gpt2.json
  fi
  if [ $SECONDS -lt 530 ]; then
    timeout 50 $B bench train --set model.preset=llama-1b --set device=cuda --set train.batch_size=4 --set train.seq_len=2048 --warmup 2 --steps 3 --profile > $OUT/profile_llama1b.json
  fi ) &
P1=$!
wait $P0
GPUS="0 0 0" OPTS="frugal:1e-3,3e-3 apollo_mini:3e-3" RUN_TIMEOUT=$(( 575 - SECONDS )) NO_TAR=1 bash bench/convergence.sh
wait $P1
tar -C $OUT -czf $OUT/pending.tar.gz conv tests.log gpu_optim.log $(cd $OUT && ls profile_*.json 2>/dev/null) && rm -rf $OUT/conv $OUT/tests.log $OUT/gpu_optim.log $OUT/profile_*.json
grep -hE "test result|FAILED|panicked|rel.err" <(tar -xzOf $OUT/pending.tar.gz tests.log)
cut -c1-200 $OUT/optim.jsonl
