#!/usr/bin/env bash
# Optimizer convergence at equal tokens (issue 4), on one GPU machine:
# llama-60m on a real corpus that exists there without download (the Python
# sources of its Python installation, tokenized with GPT-2 BPE), a small
# learning-rate sweep per optimizer, then one plot + table via `compare`.
#   TOKENS (default 50M) tokens per run; runs land in runs/conv/.
# Binary at .dev/ferrotron. Budget: ~24 runs of llama-60m; split OPTS across
# sessions if the device time does not allow all of them at once.
set -u
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
TOKENS=${TOKENS:-50000000}
BATCH=64 SEQ=256
STEPS=$(( TOKENS / (BATCH * SEQ) ))
PY=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
[ -f data/py/meta.json ] || $B prepare --input "$PY" --out data/py --val-fraction 0.01
OPTS=${OPTS:-"adamw:1e-3,3e-3 adamw8bit:1e-3,3e-3 lion:1e-4,3e-4 apollo:1e-2,3e-3 apollo_mini:1e-2,3e-3 frugal:1e-3,3e-3 muon:2e-2,1e-2 cosmos:1e-4,3e-4"}
for spec in $OPTS; do
  opt=${spec%%:*}
  for lr in $(echo "${spec#*:}" | tr ',' ' '); do
    $B train --set model.preset=llama-60m --set device=cuda --set data.path=data/py \
      --set optimizer.name=$opt --set optimizer.lr=$lr \
      --set train.batch_size=$BATCH --set train.seq_len=$SEQ --set train.steps=$STEPS \
      --set train.warmup_steps=$(( STEPS / 10 )) --set train.eval_every=$(( STEPS / 10 )) \
      --set train.ckpt_every=0 --set train.samples=0 --set run.progress=false \
      --set run.dir=runs/conv --set run.name=${opt}-lr${lr} > $OUT/${opt}-lr${lr}.log 2>&1
    tail -2 $OUT/${opt}-lr${lr}.log
  done
done
$B compare --runs runs/conv/* --out $OUT/convergence.png | tee $OUT/convergence.md
