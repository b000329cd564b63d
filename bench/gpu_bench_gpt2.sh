#!/usr/bin/env bash
# Side-by-side training benchmarks on one GPU, in one session (run on the GPU
# machine from the repo root, with the built binary at .dev/ferrotron).
# Every line of $OUT/bench.jsonl is one engine's result (JSON).
source "$(dirname "$0")/side_by_side.sh"

./.dev/cuda_ops --test-threads=1 > $OUT/cuda_ops.log 2>&1; tail -3 $OUT/cuda_ops.log
python3 bench/hf_logits_fixtures.py /tmp/hf > $OUT/cuda_model.log 2>&1
FERROTRON_HF_FIXTURES=/tmp/hf ./.dev/cuda_model --test-threads=1 --nocapture >> $OUT/cuda_model.log 2>&1; grep -E 'test result|max.logit' $OUT/cuda_model.log

# GPT-2 124M, seq 1024: two rounds, alternating engines.
G="--set model.preset=gpt2-124m --set train.batch_size=8 --set train.seq_len=1024"
ft $G --warmup 3 --steps 10 --export-init /tmp/g124
for r in 1 2; do
  pt --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 5 --steps 10 --compile
  ft $G --warmup 3 --steps 10
done
pt --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 3 --steps 10
ft $G --warmup 2 --steps 3 --profile > $OUT/profile_gpt2.json

