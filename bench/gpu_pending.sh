#!/usr/bin/env bash
# What the 2026-11-28 evening session built but could not run on a GPU (its
# device budget ran out), on ONE nvidia-h200 in two calls of < 10 minutes:
#   PART=conv   the CUDA tests (ops incl. adamw_segments and the fused
#               epilogues, every optimizer vs the CPU, whole model + HF logits)
#               while the 7 missing convergence runs (frugal x2, muon x2,
#               cosmos x2, apollo_mini lr 3e-3) share the GPU, all at once;
#               timing here is not a benchmark.
#   PART=bench  alone on the GPU: the optimizer-step benchmark (gpu_optim.sh),
#               GPT-2 124M side by side with torch.compile, llama-1b 4x2048
#               side by side (recompute off/on), per-op profiles of both.
# Needs .dev/{ferrotron,cuda_ops,cuda_optim,cuda_model} (bench/stage_binaries.sh)
# and .whl/site (carry [".dev", ".whl"]). The tool returns at most 8 files:
# everything bulky comes back in $OUT/pending.tar.gz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=./.dev/ferrotron
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
pack() { (cd $OUT && tar -czf pending.tar.gz "$@" && rm -rf "$@"); }

if [ "${PART:-}" = conv ]; then
  OPTS="" NO_TAR=1 bash bench/convergence.sh # prepares data/py once (no runs)
  ( ./.dev/cuda_ops --test-threads=1 > $OUT/tests.log 2>&1
    ./.dev/cuda_optim --nocapture >> $OUT/tests.log 2>&1
    python3 bench/hf_logits_fixtures.py /tmp/hf >> $OUT/tests.log 2>&1
    FERROTRON_HF_FIXTURES=/tmp/hf ./.dev/cuda_model --test-threads=1 --nocapture >> $OUT/tests.log 2>&1 ) &
  GPUS="0 0 0 0 0 0 0" OPTS="frugal:1e-3,3e-3 muon:2e-2,1e-2 cosmos:1e-4,3e-4 apollo_mini:3e-3" \
    RUN_TIMEOUT=$(( 570 - SECONDS )) NO_TAR=1 bash bench/convergence.sh
  wait
  grep -hE "test result|FAILED|panicked|rel.err|max.logit" $OUT/tests.log
  pack conv tests.log
elif [ "${PART:-}" = bench ]; then
  ./.dev/cuda_ops --test-threads=1 --nocapture linear 2>&1 | grep -E "dbias|test result|panicked"
  bash bench/gpu_optim.sh > $OUT/gpu_optim.log 2>&1
  source bench/side_by_side.sh
  G="--set model.preset=gpt2-124m --set train.batch_size=8 --set train.seq_len=1024"
  ft $G --warmup 3 --steps 10 --export-init /tmp/g124 | cut -c1-200
  timeout 150 python3 bench/torch_train.py --hf-dir /tmp/g124 --batch 8 --seq 1024 --warmup 5 --steps 10 --compile 2>>$OUT/stderr.log | tail -1 | tee -a $J | cut -c1-250
  ft $G --warmup 3 --steps 10 | cut -c1-200
  ft $G --warmup 3 --steps 10 | cut -c1-200
  ft $G --warmup 2 --steps 3 --profile > $OUT/profile_gpt2.json
  L="--set model.preset=llama-1b --set train.batch_size=4 --set train.seq_len=2048"
  ft $L --warmup 2 --steps 5 --export-init /tmp/l1b | cut -c1-200
  ft $L --set train.recompute=true --warmup 2 --steps 5 | cut -c1-200
  ft $L --set train.recompute=true --warmup 2 --steps 3 --profile > $OUT/profile_llama1b.json
  [ $SECONDS -lt 400 ] && timeout $(( 575 - SECONDS )) python3 bench/torch_train.py --hf-dir /tmp/l1b --batch 4 --seq 2048 --warmup 3 --steps 5 --compile --lr 1e-3 --weight-decay 0 2>>$OUT/stderr.log | tail -1 | tee -a $J | cut -c1-250
  pack gpu_optim.log profile_gpt2.json profile_llama1b.json
  cut -c1-200 $OUT/optim.jsonl
elif [ "${PART:-}" = last ]; then
  # The bench part ran out of its time before torch.compile on llama-1b; then
  # the COSMOS runs (too slow to finish while sharing the GPU with six others
  # in PART=conv) and APOLLO-Mini 3e-3, three at once, until the call ends.
  source bench/side_by_side.sh
  L="--set model.preset=llama-1b --set train.batch_size=4 --set train.seq_len=2048"
  ft $L --warmup 2 --steps 5 --export-init /tmp/l1b | cut -c1-200
  timeout 240 python3 bench/torch_train.py --hf-dir /tmp/l1b --batch 4 --seq 2048 --warmup 3 --steps 5 --compile --lr 1e-3 --weight-decay 0 2>>$OUT/stderr.log | tail -1 | tee -a $J | cut -c1-250
  ft $L --warmup 2 --steps 5 | cut -c1-200
  OPTS="" NO_TAR=1 bash bench/convergence.sh # prepares data/py (no runs)
  GPUS="0 0 0" OPTS="cosmos:1e-4,3e-4 apollo_mini:3e-3" RUN_TIMEOUT=$(( 555 - SECONDS )) NO_TAR=1 bash bench/convergence.sh
  pack conv
else
  echo "set PART=conv or PART=bench" >&2; exit 2
fi
