# Sourced by the side-by-side training benchmark scripts (run on the GPU
# machine, built binary at .dev/ferrotron): environment, then `ft ARGS`
# (ferrotron bench train on CUDA) and `pt ARGS` (bench/torch_train.py), each
# appending its one JSON line to $OUT/bench.jsonl.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=./.dev/ferrotron
J=$OUT/bench.jsonl
ft() { $B bench train --set device=cuda "$@" 2>>$OUT/stderr.log | tee -a $J; }
pt() { python3 bench/torch_train.py "$@" 2>>$OUT/stderr.log | tail -1 | tee -a $J; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
