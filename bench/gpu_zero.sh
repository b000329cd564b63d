#!/usr/bin/env bash
# GPU session for the ZeRO restructure (one nvidia-h200, < 10 minutes):
# every CUDA test (parity after the parameter-store refactor, CUDA-event
# timing), ZeRO and NCCL at world size 1, bench comm at world 1, and the
# llama-1b / GPT-2 step speed against the numbers before the refactor.
# Needs .dev/ from bench/stage_binaries.sh; carry [".dev"].
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
F=./.dev/ferrotron
./.dev/cuda_ops --test-threads=1 > $OUT/cuda_ops.log 2>&1; tail -3 $OUT/cuda_ops.log
./.dev/cuda_optim > $OUT/cuda_optim.log 2>&1; tail -3 $OUT/cuda_optim.log
./.dev/cuda_model --test-threads=1 > $OUT/cuda_model.log 2>&1; tail -3 $OUT/cuda_model.log
./.dev/cuda_zero --nocapture > $OUT/cuda_zero.log 2>&1; grep -E "zero3|nccl|test result|panicked" $OUT/cuda_zero.log | cut -c1-300
./.dev/dist_nccl --nocapture > $OUT/dist_nccl.log 2>&1; tail -5 $OUT/dist_nccl.log
$F launch --nproc-per-node 1 bench comm --set device=cuda > $OUT/bench_comm.log 2>&1; tail -2 $OUT/bench_comm.log
for s in 0 3; do
  $F bench train --set model.preset=llama-1b --set device=cuda --set train.batch_size=4 --set train.seq_len=2048 --set dist.zero_stage=$s --warmup 2 --steps 6 > $OUT/llama1b_z$s.json 2> $OUT/llama1b_z$s.err
  python3 -c "import json;r=json.load(open('$OUT/llama1b_z$s.json'));print('llama-1b 4x2048 zero',$s,{k:r[k] for k in r if k in ('tokens_per_s','median_step_ms','mfu','peak_mem_bytes')})" || tail -3 $OUT/llama1b_z$s.err
done
$F bench train --set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024 --warmup 3 --steps 10 > $OUT/gpt2.json 2>$OUT/gpt2.err
python3 -c "import json;r=json.load(open('$OUT/gpt2.json'));print('gpt2 8x1024',{k:r[k] for k in r if k in ('tokens_per_s','median_step_ms','mfu','peak_mem_bytes')})" || tail -3 $OUT/gpt2.err
