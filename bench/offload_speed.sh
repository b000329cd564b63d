#!/usr/bin/env bash
# Offloaded training speed on one H200 (issue 14). One case per call so
# each fits a 10-minute device call; no argument runs them all in order.
#   bash bench/offload_speed.sh 8b-adamw8bit     # llama3-8b, optimizer offload, params on the GPU (bf16)
#   bash bench/offload_speed.sh 8b-adamw8bit-clip  # same with grad_clip=1 (steps after backward, no overlap)
#   bash bench/offload_speed.sh 8b-params-cpu    # offload.params=cpu: bf16 weights streamed per unit from host memory
#   bash bench/offload_speed.sh 1b-offload       # llama-1b offloaded ...
#   bash bench/offload_speed.sh 1b-plain         # ... vs the plain GPU run
#   bash bench/offload_speed.sh fsdp2-1b         # PyTorch FSDP2 + CPUOffloadPolicy, llama-1b (AdamW)
#   bash bench/offload_speed.sh 1b-offload-adamw # ferrotron with the same optimizer as FSDP2
#   bash bench/offload_speed.sh fsdp2-8b         # FSDP2 at llama3-8b (fp32 AdamW state: may not fit 128 GiB)
# llama3-8b: seq 4096, batch 1, whole-block checkpointing, 8-bit AdamW.
# Each case writes $OUT/<case>.json (bench JSON: median step, tok/s, GPU
# peak, per-step offload phases), <case>.err and <case>.rss (host peak RSS,
# bytes). Carry `.dev` = target/release/ferrotron.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/offload_speed}; mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader; nproc; free -g | head -2; } > "$OUT/machine.txt"

# Runs a command, its stdout to $OUT/$1.json, stderr to .err, peak RSS to .rss.
measure() {
  local name=$1; shift
  local s=$(date +%s)
  python3 -c 'import resource,subprocess,sys
r=subprocess.run(sys.argv[2:], stdout=open(sys.argv[1]+".json","w"), stderr=open(sys.argv[1]+".err","w"))
open(sys.argv[1]+".rss","w").write("%d\n" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024))
sys.exit(r.returncode)' "$OUT/$name" timeout 560 "$@"
  echo "$name: exit $? after $(( $(date +%s) - s )) s, host peak RSS $(cat "$OUT/$name.rss") B" | tee -a "$OUT/$name.err"
  head -c 1500 "$OUT/$name.json"; echo; tail -3 "$OUT/$name.err"
}

F=./.dev/ferrotron
B8="--set model.preset=llama3-8b --set device=cuda --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit"
B1="--set model.preset=llama-1b --set device=cuda --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit"

run_case() {
  case $1 in
    8b-adamw8bit) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 1 --steps 3 ;;
    8b-adamw8bit-clip) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set train.grad_clip=1 --warmup 1 --steps 3 ;;
    8b-params-cpu) measure $1 $F bench train $B8 --set offload.optimizer=cpu --set offload.params=cpu --set train.grad_clip=0 --warmup 1 --steps 3 ;;
    1b-offload) measure $1 $F bench train $B1 --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    1b-offload-adamw) measure $1 $F bench train $B1 --set optimizer.name=adamw --set offload.optimizer=cpu --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    1b-plain) measure $1 $F bench train $B1 --set train.grad_clip=0 --warmup 2 --steps 5 ;;
    fsdp2-1b) measure $1 python3 bench/fsdp2_offload.py --preset llama-1b --seq 4096 --batch 1 --warmup 2 --steps 5 ;;
    fsdp2-8b) measure $1 python3 bench/fsdp2_offload.py --preset llama3-8b --seq 4096 --batch 1 --warmup 1 --steps 3 ;;
    *) echo "unknown case $1"; exit 2 ;;
  esac
}

if [ $# -eq 0 ]; then
  for c in 1b-plain 1b-offload 1b-offload-adamw fsdp2-1b 8b-adamw8bit 8b-adamw8bit-clip 8b-params-cpu fsdp2-8b; do run_case $c; done
else
  for c in "$@"; do run_case $c; done
fi
