#!/usr/bin/env bash
# Offloaded training speed on one H200 (issue 14). One case per call so
# each fits a 10-minute device call; no argument runs them all in order.
# llama3-8b width: seq 4096, batch 1, whole-block checkpointing.
#   bash bench/offload_speed.sh 8b-adamw8bit     # llama3-8b, optimizer offload (8-bit AdamW), params on the GPU (bf16), grad_clip 0
#   bash bench/offload_speed.sh 8b-adamw8bit-clip  # same with grad_clip=1 (steps after backward, no overlap)
#   bash bench/offload_speed.sh 8b-adamw         # fp32 AdamW offload, grad_clip 0: 18 B/param of host memory does not
#   bash bench/offload_speed.sh 8b-adamw-clip    #   fit 128 GiB at 32 layers (ferrotron refuses at once): steps down
#                                                #   LAYER_STEPS until it starts; then the same with grad_clip=1
#   bash bench/offload_speed.sh 8b-params-cpu    # offload.params=cpu: bf16 weights streamed per unit from host memory
#   bash bench/offload_speed.sh fsdp2-8b         # PyTorch FSDP2 + CPUOffloadPolicy (fp32 AdamW on the CPU), world size 1,
#                                                #   deepest shape that fits host memory (16 B/param: not 32 layers), then
#                                                #   ferrotron at that same shape: AdamW and 8-bit AdamW offload, grad_clip 0
#   bash bench/offload_speed.sh deepspeed-8b     # DeepSpeed 0.19.8 ZeRO-2 + offload_optimizer cpu (DeepSpeedCPUAdam), bf16,
#                                                #   installed from .dev/wheels, CPU Adam op built first; same step-down;
#                                                #   then ferrotron AdamW offload at its shape unless fsdp2-8b ran it
#                                                #   (8-bit AdamW too where AdamW does not fit there)
#   bash bench/offload_speed.sh deepspeed-install  # only the install + CPU Adam build, timed
#   bash bench/offload_speed.sh 1b-offload       # llama-1b offloaded ...
#   bash bench/offload_speed.sh 1b-plain         # ... vs the plain GPU run
#   bash bench/offload_speed.sh fsdp2-1b         # PyTorch FSDP2 + CPUOffloadPolicy, llama-1b (AdamW)
#   bash bench/offload_speed.sh 1b-offload-adamw # ferrotron with the same optimizer as FSDP2
#   bash bench/offload_speed.sh deepspeed-1b     # DeepSpeed ZeRO-2 + offload_optimizer cpu, llama-1b (AdamW)
# Each case writes $OUT/<case>.json (bench JSON: median step, tok/s, GPU
# peak, per-step offload phases; the PyTorch scripts add n_layers and their
# setup times), <case>.err and <case>.rss (host peak RSS, bytes).
# Carry `.dev` = target/release/ferrotron (+ .dev/wheels for DeepSpeed:
# bench/deepspeed_wheels.sh).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/offload_speed}; mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader; nproc; free -g | head -2; } > "$OUT/machine.txt"

# The whole call's wall-time budget (a device call stops at 600 s): each
# command's limit is what is left of it, 560 s at most.
START=$(date +%s) BUDGET_S=${BUDGET_S:-585}

# Runs a command, its stdout to $OUT/$1.json, stderr to .err, peak RSS to
# .rss; returns the command's exit status (124: out of time).
measure() {
  local name=$1; shift
  local s=$(date +%s) left=$(( BUDGET_S - ($(date +%s) - START) ))
  local limit=$(( left < 560 ? left : 560 ))
  if [ "$limit" -lt 30 ]; then echo "$name: skipped, ${left}s of the call's budget left" | tee "$OUT/$name.err"; return 124; fi
  python3 -c 'import resource,subprocess,sys
r=subprocess.run(sys.argv[2:], stdout=open(sys.argv[1]+".json","w"), stderr=open(sys.argv[1]+".err","w"))
open(sys.argv[1]+".rss","w").write("%d\n" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024))
sys.exit(r.returncode)' "$OUT/$name" timeout "$limit" "$@"
  local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - s )) s, host peak RSS $(cat "$OUT/$name.rss") B" | tee -a "$OUT/$name.err"
  head -c 1500 "$OUT/$name.json"; echo; tail -3 "$OUT/$name.err"
  return $rc
}

F=${FERROTRON:-./.dev/ferrotron}
B8="--set model.preset=llama3-8b --set device=cuda --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit"
B1="--set model.preset=llama-1b --set device=cuda --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit"

LAYER_STEPS=${LAYER_STEPS:-"32 28 24 20 16"}

# ferrotron offload at the deepest of LAYER_STEPS whose host need fits:
# the run refuses at once, before allocating, when it does not (the
# message names the host memory), so stepping down costs seconds.
# usage: ft_step_down CASE EXTRA_SETTINGS...
ft_step_down() {
  local name=$1; shift
  for l in $LAYER_STEPS; do
    measure "$name" $F bench train $B8 --set model.n_layers=$l "$@" --warmup 1 --steps 3 && { echo "$l" > "$OUT/$name.layers"; return 0; }
    grep -q "of host memory" "$OUT/$name.err" || return 1
    mv "$OUT/$name.err" "$OUT/$name.L$l.err"
    echo "$name: $l layers do not fit host memory; trying fewer"
  done
  return 1
}

# A PyTorch offload script (fsdp2_offload.py / deepspeed_offload.py) at the
# deepest shape its host estimate allows, one block of 4 layers fewer after
# a failure (the estimate is a lower bound: the kernel may still kill it).
# usage: py_step_down CASE SCRIPT ARGS...
py_step_down() {
  local name=$1 script=$2; shift 2
  local l=${PY_LAYERS:-}  # PY_LAYERS=24: start there (e.g. the shape ferrotron's AdamW fits)
  [ -n "$l" ] || l=$(cd bench && python3 -c 'import offload_fit as o; print(o.pick_layers("llama3-8b", "auto")[0])') || return 1
  for try in 1 2 3; do
    measure "$name" python3 "$script" --preset llama3-8b --seq 4096 --batch 1 --layers "$l" "$@" && { echo "$l" > "$OUT/$name.layers"; return 0; }
    [ $? -eq 124 ] && return 1  # out of time: a smaller shape would not help
    mv "$OUT/$name.err" "$OUT/$name.L$l.err"
    l=$(( l - 4 )); [ "$l" -ge 4 ] || return 1
    echo "$name: failed; trying $l layers"
  done
  return 1
}

# ferrotron offload at the shape a PyTorch case ended at (AdamW, as PyTorch
# has; and 8-bit AdamW with "both", or when AdamW's 18 B/param do not fit
# where PyTorch's 16 did), grad_clip 0 like the PyTorch runs.
same_shape() {
  local l; l=$(cat "$OUT/$1.layers" 2>/dev/null) || { echo "$1 did not run: no shape to match"; return 1; }
  local fit=yes
  if [ ! -s "$OUT/8b-L$l-adamw.json" ]; then
    measure "8b-L$l-adamw" $F bench train $B8 --set model.n_layers=$l --set optimizer.name=adamw --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 1 --steps 3 ||
      { grep -q "of host memory" "$OUT/8b-L$l-adamw.err" && fit=no; }
  fi
  if [ "$2" = both ] || [ $fit = no ]; then
    [ -s "$OUT/8b-L$l-adamw8bit.json" ] || measure "8b-L$l-adamw8bit" $F bench train $B8 --set model.n_layers=$l --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 1 --steps 3
  fi
  return 0
}

run_case() {
  case $1 in
    8b-adamw8bit) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 1 --steps 3 ;;
    8b-adamw8bit-clip) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set train.grad_clip=1 --warmup 1 --steps 3 ;;
    8b-adamw) ft_step_down $1 --set optimizer.name=adamw --set offload.optimizer=cpu --set train.grad_clip=0 ;;
    8b-adamw-clip) ft_step_down $1 --set optimizer.name=adamw --set offload.optimizer=cpu --set train.grad_clip=1 ;;
    8b-params-cpu) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set offload.params=cpu --set train.grad_clip=0 --warmup 1 --steps 3 ;;
    1b-offload) measure $1 $F bench train $B1 --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    1b-offload-adamw) measure $1 $F bench train $B1 --set optimizer.name=adamw --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    1b-plain) measure $1 $F bench train $B1 --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    fsdp2-1b) measure $1 python3 bench/fsdp2_offload.py --preset llama-1b --seq 4096 --batch 1 --layers 24 --warmup 2 --steps 5 ;;
    fsdp2-8b) py_step_down $1 bench/fsdp2_offload.py --warmup 1 --steps 3; same_shape fsdp2-8b both ;;
    deepspeed-1b) measure $1 python3 bench/deepspeed_offload.py --preset llama-1b --seq 4096 --batch 1 --layers 24 --warmup 2 --steps 5 ;;
    deepspeed-install) measure $1 python3 bench/deepspeed_offload.py --install-only ;;
    deepspeed-8b) py_step_down $1 bench/deepspeed_offload.py --warmup 1 --steps 3; same_shape deepspeed-8b adamw ;;
    *) echo "unknown case $1"; exit 2 ;;
  esac
}

if [ $# -eq 0 ]; then
  for c in 1b-plain 1b-offload 1b-offload-adamw fsdp2-1b 8b-adamw8bit 8b-adamw8bit-clip 8b-adamw 8b-adamw-clip 8b-params-cpu fsdp2-8b deepspeed-8b; do run_case $c; done
else
  for c in "$@"; do run_case $c; done
fi
