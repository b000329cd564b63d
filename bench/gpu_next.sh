#!/usr/bin/env bash
# GPU session script (one nvidia-h200; each PART fits one call of < 10
# minutes; check, long and cosmos were run on 2026-11-29, see
# bench/results/gpu_2026-11-29.md):
#   PART=tests  every CUDA test (incl. HF logits vs transformers, the
#               recompute modes and chunked logits), ~1.5 minutes.
#   PART=check  the tests, then llama-1b 4x2048 side by side with
#               torch.compile (recompute off, elementwise, whole blocks), its
#               per-op profile, GPT-2 124M, the attention benchmark.
#   PART=long   llama-1b at 32768: ferrotron recompute and checkpoint_layers
#               (attention output kept, and not) vs PyTorch activation
#               checkpointing.
#   PART=maxseq ENGINES=pytorch (one call) then ENGINES=ferrotron (another):
#               bench/max_seq.py, the longest sequence each engine trains
#               (predicted from two short runs, checked with one step; a step
#               near the limit takes minutes). PART="tests maxseq" runs the
#               CUDA tests first (the probe lengths use chunked logits).
#               LENGTHS=a,b,... skips the probes: one step at each, in order,
#               until one fails (to continue an earlier call's search).
#   PART=optprof per-op profiles of Muon, COSMOS and APOLLO steps on llama-1b.
#   PART=cosmos the two COSMOS convergence runs of the optimizer sweep.
# PART may name several, run in order ("long optprof"); each packs its bulky
# output into $OUT/next-<part>.tar.gz.
# Needs .dev/{ferrotron,cuda_ops,cuda_optim,cuda_model} (bench/stage_binaries.sh);
# carry [".dev"].
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
pack() { (cd $OUT && tar -czf next-$part.tar.gz "$@" && rm -rf "$@"); }

# Every CUDA test (HF logits against transformers included) into tests.log.
run_tests() {
  ./.dev/cuda_ops --test-threads=1 --nocapture > $OUT/tests.log 2>&1
  ./.dev/cuda_optim --nocapture >> $OUT/tests.log 2>&1
  python3 bench/hf_logits_fixtures.py /tmp/hf >> $OUT/tests.log 2>&1
  FERROTRON_HF_FIXTURES=/tmp/hf ./.dev/cuda_model --test-threads=1 --nocapture >> $OUT/tests.log 2>&1
  grep -hE "^test |test result|panicked|max.logit|chunk 64|Layers" $OUT/tests.log | cut -c1-200
}

[ -n "${PART:-}" ] || { echo "set PART to one or more of: tests check long maxseq optprof cosmos" >&2; exit 2; }
for part in $PART; do
case "$part" in
tests)
  run_tests
  pack tests.log ;;
check)
  run_tests
  source bench/side_by_side.sh
  L="--set model.preset=llama-1b --set train.batch_size=4 --set train.seq_len=2048"
  ft $L --warmup 2 --steps 5 --export-init /tmp/l1b | cut -c1-200
  timeout 240 python3 bench/torch_train.py --hf-dir /tmp/l1b --batch 4 --seq 2048 --warmup 3 --steps 5 --compile --lr 1e-3 --weight-decay 0 2>>$OUT/stderr.log | tail -1 | tee -a $J | cut -c1-250
  ft $L --warmup 2 --steps 5 | cut -c1-200
  ft $L --set train.recompute=true --warmup 2 --steps 5 | cut -c1-200
  ft $L --set train.checkpoint_layers=true --warmup 2 --steps 5 | cut -c1-200
  ft $L --set train.checkpoint_layers=true --set train.checkpoint_keep_attention=false --warmup 2 --steps 5 | cut -c1-200
  timeout 60 ./.dev/cuda_ops --ignored attention_bench --nocapture > $OUT/attention_bench.log 2>&1
  ft $L --set train.recompute=true --warmup 2 --steps 3 --profile > $OUT/profile_llama1b.json
  G="--set model.preset=gpt2-124m --set train.batch_size=8 --set train.seq_len=1024"
  ft $G --warmup 3 --steps 10 | cut -c1-200
  pack tests.log profile_llama1b.json attention_bench.log ;;
long)
  source bench/side_by_side.sh
  ft --set model.preset=llama-1b --set train.batch_size=1 --set train.seq_len=32768 --set train.recompute=true --warmup 1 --steps 2 --export-init /tmp/l1b | cut -c1-200
  ft --set model.preset=llama-1b --set train.batch_size=1 --set train.seq_len=32768 --set train.checkpoint_layers=true --warmup 1 --steps 2 | cut -c1-200
  ft --set model.preset=llama-1b --set train.batch_size=1 --set train.seq_len=32768 --set train.checkpoint_layers=true --set train.checkpoint_keep_attention=false --warmup 1 --steps 2 | cut -c1-200
  timeout 200 python3 bench/torch_train.py --hf-dir /tmp/l1b --batch 1 --seq 32768 --warmup 1 --steps 2 --checkpointing --lr 1e-3 --weight-decay 0 2>>$OUT/stderr.log | tail -1 | tee -a $J | cut -c1-250 ;;
maxseq)
  python3 bench/max_seq.py --engines "${ENGINES:-pytorch}" ${LENGTHS:+--lengths $LENGTHS} --seconds $(( ${BUDGET:-575} - SECONDS )) ;;
cosmos)
  OPTS="" NO_TAR=1 bash bench/convergence.sh # prepares data/py (no runs)
  # ffn_multiple=1: the same shapes as the other 14 runs of the sweep (made
  # before the SwiGLU padding; COSMOS' step scales with the matrix shape).
  GPUS="0 0" OPTS="cosmos:1e-4,3e-4" EXTRA="--set model.ffn_multiple=1" RUN_TIMEOUT=$(( ${BUDGET:-565} - SECONDS )) NO_TAR=1 bash bench/convergence.sh
  pack conv ;;
optprof)
  # Where Muon's, COSMOS' and APOLLO's step time goes on llama-1b (per op,
  # matmuls by shape; every op synchronized).
  mkdir -p $OUT/optprof
  for o in muon cosmos apollo; do
    ./.dev/ferrotron bench optim --set model.preset=llama-1b --set device=cuda --set optimizer.name=$o --warmup 2 --steps 3 --profile > $OUT/optprof/$o.json 2>>$OUT/stderr.log
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], round(d['median_step_ms'],1), 'ms;', [(op, round(ms,1)) for op,_,ms in d['profile'][:8]])" $OUT/optprof/$o.json $o
  done
  pack optprof ;;
*)
  echo "unknown PART '$part': use tests, check, long, maxseq, optprof or cosmos" >&2; exit 2 ;;
esac
done
