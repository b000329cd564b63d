#!/usr/bin/env bash
# Optimizer-step benchmark over llama-1b's 1.4B parameters, ferrotron and
# PyTorch (fused AdamW; bitsandbytes AdamW8bit when its wheel is installed)
# in one session. Binary at .dev/ferrotron.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
# bitsandbytes: its wheel unpacked here into .whl/site (carried; see bench/README.md)
[ -d .whl/site ] && export PYTHONPATH=$PWD/.whl/site
B=./.dev/ferrotron
$B bench train --set model.preset=llama-1b --set device=cuda --set train.batch_size=1 --set train.seq_len=64 --warmup 0 --steps 1 --export-init /tmp/l1b > /dev/null
for o in adamw adamw8bit lion apollo apollo_mini frugal muon cosmos; do
  $B bench optim --set model.preset=llama-1b --set device=cuda --set optimizer.name=$o --warmup 3 --steps 10 | tee -a $OUT/optim.jsonl
done
python3 bench/optim_torch.py --hf-dir /tmp/l1b | tee -a $OUT/optim.jsonl
