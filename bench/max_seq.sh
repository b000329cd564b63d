#!/usr/bin/env bash
# Longest sequence that trains on one GPU (issue 3): llama-1b, batch 1,
# ferrotron with train.checkpoint_layers=true vs PyTorch with activation
# checkpointing, doubling from 32768 until a step fails (out of memory).
# Binary at .dev/ferrotron; results as JSON lines in $OUT/max_seq.jsonl.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
L="--set model.preset=llama-1b --set device=cuda --set train.batch_size=1"
$B bench train $L --set train.seq_len=64 --warmup 0 --steps 1 --export-init /tmp/l1b > /dev/null
for engine in ferrotron pytorch; do
  seq=32768
  while [ $seq -le 1048576 ]; do
    if [ $engine = ferrotron ]; then
      line=$($B bench train $L --set model.max_seq_len=$seq --set train.seq_len=$seq --set train.checkpoint_layers=true --warmup 0 --steps 1 2>$OUT/err.txt)
    else
      line=$(python3 bench/torch_train.py --hf-dir /tmp/l1b --batch 1 --seq $seq --warmup 0 --steps 1 --checkpointing 2>$OUT/err.txt | tail -1)
    fi
    if [ -z "$line" ] || ! echo "$line" | grep -q tokens_per_s; then
      echo "{\"engine\":\"$engine\",\"seq_len\":$seq,\"failed\":\"$(tail -1 $OUT/err.txt | tr -d '\"' | cut -c1-300)\"}" | tee -a $OUT/max_seq.jsonl
      break
    fi
    echo "$line" | tee -a $OUT/max_seq.jsonl | cut -c1-200
    seq=$(( seq * 2 ))
  done
done
