#!/usr/bin/env bash
# Optimizer convergence at equal tokens (issue 4), on one GPU machine:
# llama-60m on a real corpus that exists there without download (the Python
# sources of its Python installation: the standard library and the
# transformers package, tokenized with GPT-2 BPE, 1% held out for
# validation), a small learning-rate sweep per optimizer.
#   TOKENS (default 50M) tokens per run; runs land in runs/conv/.
#   PRESET, DEVICE, BATCH, SEQ  (llama-60m, cuda, 64, 256): other values for
#          a dry run of this script on a CPU.
#   OPTS   "name:lr1,lr2 ..." the runs to do (default: all eight optimizers).
#   NO_TAR  set: leave $OUT/conv/ as it is (a caller running several
#          sweeps at once packs it).
#   RUN_TIMEOUT  seconds after which a run is stopped (default: none); what
#          it logged so far is kept.
#   EXTRA  more `--set key=value` arguments for every run.
#   GPUS   the slots to spread the runs over, as GPU indices (default "0");
#          repeat an index to run several small runs on one GPU at once
#          ("0 1 0 1": two per GPU on two GPUs).
# Each run's config.toml + metrics.jsonl + log end up in $OUT/conv.tar.gz
# (the device tool returns at most 8 files), one folder per run, so
# `ferrotron compare --runs <those folders>` makes the table and plot.
# Binary at .dev/ferrotron.
set -u
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
TOKENS=${TOKENS:-50000000}
read -r -a GPU_IDS <<< "${GPUS:-0}"
N_GPU=${#GPU_IDS[@]}
BATCH=${BATCH:-64} SEQ=${SEQ:-256} PRESET=${PRESET:-llama-60m} DEVICE=${DEVICE:-cuda}
STEPS=$(( TOKENS / (BATCH * SEQ) ))
if [ ! -f data/py/meta.json ]; then
  STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  INPUTS=(--input "$STDLIB")
  HF=$(python3 -c 'import transformers, os; print(os.path.dirname(transformers.__file__))' 2>/dev/null) && INPUTS+=(--input "$HF")
  $B prepare "${INPUTS[@]}" --out data/py --val-fraction 0.01 2>&1 | tail -3 | tee $OUT/prepare.txt
fi
OPTS=${OPTS-"adamw:1e-3,3e-3 adamw8bit:1e-3,3e-3 lion:1e-4,3e-4 apollo:1e-2,3e-3 apollo_mini:1e-2,3e-3 frugal:1e-3,3e-3 muon:2e-2,1e-2 cosmos:1e-4,3e-4"}
RUNS=()
for spec in $OPTS; do
  for lr in $(echo "${spec#*:}" | tr ',' ' '); do RUNS+=("${spec%%:*} $lr"); done
done

one_run() { # gpu opt lr
  local name=$2-lr$3
  CUDA_VISIBLE_DEVICES=$1 timeout ${RUN_TIMEOUT:-0} $B train --set model.preset=$PRESET --set device=$DEVICE --set data.path=data/py \
    --set optimizer.name=$2 --set optimizer.lr=$3 \
    --set train.batch_size=$BATCH --set train.seq_len=$SEQ --set train.steps=$STEPS \
    --set train.warmup_steps=$(( STEPS / 10 )) --set train.eval_every=$(( STEPS / 20 )) \
    --set train.eval_batches=8 --set train.ckpt_every=0 --set train.samples=0 --set run.progress=false \
    --set run.dir=runs/conv --set run.name=$name ${EXTRA:-} > runs/conv-$name.log 2>&1
  mkdir -p $OUT/conv/$name
  cp runs/conv/$name/config.toml runs/conv/$name/metrics.jsonl $OUT/conv/$name/ 2>/dev/null
  cp runs/conv-$name.log $OUT/conv/$name/train.log
  echo "gpu $1 $name: $(tail -1 runs/conv-$name.log | cut -c1-160)"
}

mkdir -p runs
i=0
for r in "${RUNS[@]}"; do
  one_run ${GPU_IDS[$(( i % N_GPU ))]} $r &
  i=$(( i + 1 ))
  if [ $(( i % N_GPU )) -eq 0 ]; then wait; fi
done
wait
[ -n "${NO_TAR:-}" ] || { tar -C $OUT -czf $OUT/conv.tar.gz conv && rm -rf $OUT/conv; }
