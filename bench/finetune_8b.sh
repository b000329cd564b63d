#!/usr/bin/env bash
# Full fine-tune of a Llama-3-8B-shaped model on one H200, with Llama 3's real
# tokenizer on real English text (issue 14). One command on the GPU machine:
#
#   bash bench/finetune_8b.sh [STEPS] [--init-from HF_DIR] [PHASE ...]
#
# STEPS (default 20) is the step count of the main run; PHASEs (default: all,
# in this order):
#   data      English prose from the machine's Python standard library
#             (bench/algoperf_prose.py: docstrings and text files; the GPU
#             machine has no internet) -> `ferrotron prepare --tokenizer
#             .dev/llama3` (Llama 3 ids: <|begin_of_text|> ... <|end_of_text|>
#             per document; 1% of documents held out for validation)
#   gpu2048   STEPS steps at batch 1 x 2048, whole-block activation
#             checkpointing, 8-bit AdamW on the GPU; the run ends with a
#             validation pass, one sample and its checkpoint
#   generate  `ferrotron generate --device cuda` from that checkpoint: greedy,
#             the prompt encoded and the answer decoded by the Llama 3 tokenizer
#   gpu4096   STEPS/2 steps at batch 1 x 4096, same settings
#   offload   OFFLOAD_STEPS (default 4) steps at 1 x 2048 with
#             offload.optimizer=cpu: fp32 master weights and 8-bit AdamW state
#             in host memory, each unit's step on the CPU overlapped with
#             backward (train.grad_clip=0, which the overlap needs)
# Each run's checkpoint (fp32 weights + 8-bit state, ~49 GB at 8B) is deleted
# once its phase is done: the 64 GiB disk holds one at a time.
#
# Weights: RANDOM INIT by default. No real Llama-3-8B checkpoint (16 GB of
# bf16) can be carried to the GPU machine, so the model has the shape of
# Llama 3 8B (32 layers, d_model 4096, GQA with 8 kv heads, d_ff 14336, vocab
# 128256, rope theta 500000) and starts from ferrotron's initialisation: the
# loss starts at ln(128256) = 11.76 and what the curve shows is a model
# learning the text, not a fine-tune of Meta's weights. With --init-from DIR
# (a Hugging Face Llama 3 / 3.1 folder: config.json, *.safetensors,
# tokenizer.json) the same phases start from those weights at lr 1e-5 and use
# DIR's tokenizer. ROPE_SCALING=1 adds Llama 3.1's rope scaling (factor 8,
# low/high frequency factors 1 and 4, original context 8192) to the random-init shape.
#
# Inputs (carry `.dev`): .dev/ferrotron (bench/stage_binaries.sh) and
# .dev/llama3/{tokenizer.json,tokenizer_config.json} (bench/assets_llama3.md).
# Outputs under $OUT: <phase>.out/.err (the commands' output), <run>/
# (metrics.jsonl, config.toml, loss.png of each run), generate.txt,
# summary.md (loss curves, tokens/s, device peaks: bench/finetune_report.py),
# phases.txt (each phase's wall time), machine.txt.
# Device time: see bench/finetune_8b.md (about 6 minutes for all phases by the
# estimate there); BUDGET_S (default 570) bounds the whole script: a phase
# that cannot finish in what is left is skipped and said so.
# For a CPU smoke test of the script itself:
#   PRESET=tiny-llama DEVICE=cpu SEQ=64 FERROTRON=target/release/ferrotron TOKENIZER=/work/assets/llama3 bash bench/finetune_8b.sh 4
set -uo pipefail
export NCCL_NVLS_ENABLE=0 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
cd "$(dirname "$0")/.."
START=$(date +%s)

STEPS=20 INIT_FROM="" PHASES=()
while [ $# -gt 0 ]; do
  case $1 in
    --init-from) INIT_FROM=${2:?--init-from needs a folder}; shift 2 ;;
    --init-from=*) INIT_FROM=${1#--init-from=}; shift ;;
    data|gpu2048|generate|gpu4096|offload) PHASES+=("$1"); shift ;;
    *[!0-9]*|'') echo "usage: $0 [STEPS] [--init-from HF_DIR] [data|gpu2048|generate|gpu4096|offload ...]" >&2; exit 2 ;;
    *) STEPS=$1; shift ;;
  esac
done
[ ${#PHASES[@]} -eq 0 ] && PHASES=(data gpu2048 generate gpu4096 offload)
[ "$STEPS" -ge 1 ] || { echo "STEPS must be at least 1" >&2; exit 2; }

F=${FERROTRON:-./.dev/ferrotron}
[ -x "$F" ] || F=./target/release/ferrotron
[ -x "$F" ] || { echo "no ferrotron binary: stage one with bench/stage_binaries.sh (.dev/ferrotron)" >&2; exit 2; }
TOK=${TOKENIZER:-./.dev/llama3}
if [ -n "$INIT_FROM" ]; then
  [ -f "$INIT_FROM/config.json" ] || { echo "--init-from $INIT_FROM: no config.json there (a Hugging Face model folder is expected)" >&2; exit 2; }
  [ -f "$INIT_FROM/tokenizer.json" ] && TOK=$INIT_FROM
fi
[ -f "$TOK/tokenizer.json" ] || [ -f "$TOK" ] || { echo "no Llama 3 tokenizer at $TOK (carry .dev/llama3/tokenizer.json: bench/assets_llama3.md)" >&2; exit 2; }
PRESET=${PRESET:-llama3-8b} DEVICE=${DEVICE:-cuda} SEQ=${SEQ:-2048}
OFFLOAD_STEPS=${OFFLOAD_STEPS:-4}
BUDGET_S=${BUDGET_S:-570}
OUT=${OUT:-/tmp/finetune_8b}; mkdir -p "$OUT"
WORK=${WORK:-.ft8b}; mkdir -p "$WORK"
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  echo "cores $(nproc)"; free -g | head -2; df -h "$WORK" | tail -1; "$F" --version; sha256sum "$TOK"/tokenizer.json 2>/dev/null; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# The shape and learning rate: a random-init run learns from scratch (3e-4,
# 5 warm-up steps); a real checkpoint is fine-tuned gently (1e-5).
MODEL=(--set model.preset="$PRESET")
if [ -n "$INIT_FROM" ]; then
  MODEL+=(--set model.init_from="$INIT_FROM"); LR=${LR:-1e-5}; WARMUP=${WARMUP:-2}
else
  MODEL+=(--set model.vocab_size=128256); LR=${LR:-3e-4}; WARMUP=${WARMUP:-5}
  if [ "${ROPE_SCALING:-0}" = 1 ]; then
    MODEL+=(--set model.rope_scaling_factor=8 --set model.rope_low_freq_factor=1 --set model.rope_high_freq_factor=4
            --set model.rope_original_max_seq=8192 --set model.max_seq_len=131072)
  fi
fi
COMMON=("${MODEL[@]}" --set device="$DEVICE" --set data.path="$WORK/data" --set train.batch_size=1
  --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --set optimizer.lr="$LR"
  --set train.warmup_steps="$WARMUP" --set train.schedule=cosine --set train.eval_every=0 --set train.eval_batches=4
  --set train.ckpt_every=0 --set train.keep_ckpts=1 --set train.samples=1 --set train.sample_tokens=32
  --set seed=1337)
PROMPT=${PROMPT:-"The Python standard library"}

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# Runs phase $1 with a time limit of min($2, what is left of the budget);
# skips it when less than $3 seconds are left. Output to $OUT/$1.out/.err.
phase() {
  local name=$1 cap=$2 need=$3; shift 3
  local rest; rest=$(left)
  if [ "$rest" -lt "$need" ]; then
    echo "$name: skipped, ${rest}s of the ${BUDGET_S}s budget left (it needs about ${need}s)" | tee -a "$OUT/phases.txt"
    return 1
  fi
  local limit=$(( cap < rest ? cap : rest )) s; s=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/phases.txt"
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - s ))s" | tee -a "$OUT/phases.txt"
  tail -n 6 "$OUT/$name.err"; tail -n 12 "$OUT/$name.out"
  return $rc
}

# Keeps a run's small files under $OUT and frees its checkpoint's disk.
keep_run() {
  local run=${RUN_DIR[$1]:-}
  [ -n "$run" ] && [ -d "$run" ] || return 0
  mkdir -p "$OUT/$1"
  cp "$run"/metrics.jsonl "$run"/config.toml "$run"/loss.png "$OUT/$1/" 2>/dev/null
  du -sh "$run/checkpoints" 2>/dev/null | tee -a "$OUT/phases.txt"
  [ "${2:-}" = keep ] || rm -rf "$run/checkpoints"
}

# The `ferrotron train` command of run NAME at sequence SEQ for STEPS steps
# (extra --set ... after them), in the array TRAIN; its old folder removed.
train_cmd() {
  local name=$1 seq=$2 steps=$3; shift 3
  local dir; dir=$(runs_dir "$name" "$([[ "$*" == *offload.optimizer=cpu* ]] && echo offload)")
  RUN_DIR[$name]=$dir/$name
  rm -rf "${RUN_DIR[$name]}"
  [ "$dir" = "$WORK/runs" ] || echo "$name: run folder in $dir (the disk under $WORK is short for its checkpoint)" | tee -a "$OUT/phases.txt"
  TRAIN=("$F" train "${COMMON[@]}" --set run.dir="$dir" --set run.name="$name" --set train.seq_len="$seq" --set train.steps="$steps" "$@")
}

# The tokenizer on this machine gives Llama 3's ids for a known text
# (<|begin_of_text|> Hello world <|end_of_text|>: 128000 9906 1917 128001).
tokenizer_check() {
  local d; d=$(mktemp -d)
  echo '{"text": "Hello world"}' > "$d/hw.jsonl"
  "$F" prepare --input "$d/hw.jsonl" --out "$d/data" --tokenizer "$TOK" --val-fraction 0 > /dev/null &&
    python3 -c 'import sys; sys.path.insert(0, "bench"); import llama3_tokenizer as L; print(L.read_shard(sys.argv[1]))' "$d/data/train_000000.bin" |
    tee "$OUT/tokenizer_check.txt"
  grep -q '^\[128000, 9906, 1917, 128001\]$' "$OUT/tokenizer_check.txt" && echo "tokenizer: Llama 3 ids for 'Hello world'" | tee -a "$OUT/phases.txt" ||
    echo "tokenizer: NOT Llama 3's ids for 'Hello world' (see tokenizer_check.txt)" | tee -a "$OUT/phases.txt"
  rm -rf "$d"
}

data_phase() {
  [ -n "$INIT_FROM" ] || tokenizer_check
  if [ -f "$WORK/data/meta.json" ]; then echo "kept $WORK/data" | tee -a "$OUT/phases.txt"; return 0; fi
  local stdlib; stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  phase prose 120 20 python3 bench/algoperf_prose.py "$WORK/prose.jsonl" "$stdlib" &&
    phase prepare 120 10 "$F" prepare --input "$WORK/prose.jsonl" --out "$WORK/data" --tokenizer "$TOK" --val-fraction 0.01 --overwrite
}

generate_phase() {
  local run=${RUN_DIR[ft-gpu2048]:-$WORK/runs/ft-gpu2048}
  if [ ! -d "$run/checkpoints" ]; then echo "generate: no checkpoint in $run (phase gpu2048 did not finish)" | tee -a "$OUT/phases.txt"; return 1; fi
  local g=("$F" generate --run "$run" --device "$DEVICE" --prompt "$PROMPT" --max-tokens 24 --temperature 0)
  phase generate 120 40 "${g[@]}" && cp "$OUT/generate.out" "$OUT/generate.txt"
}

# A run ends with a checkpoint (fp32 weights + 8-bit AdamW state: ~6.1 bytes
# a parameter, 49 GB at 8B) that the 64 GiB disk may not hold. Where the
# disk under $WORK is short, a GPU-only run keeps its run folder in
# /dev/shm when that has room (its host memory holds little else); an
# offloaded run holds ~92 GiB of host state already, so it stays on the
# disk and, if its final save fails, its metrics are kept all the same.
CKPT_NEED=0
disk_check() {
  local params
  params=$("$F" info "${MODEL[@]}" --set optimizer.name=adamw8bit 2>/dev/null | awk '$1 == "total" && $3 ~ /^[0-9,]+$/ {gsub(",", "", $3); print $3; exit}')
  [ -n "$params" ] && CKPT_NEED=$(( params * 61 / 10 + (2 << 30) ))
  echo "checkpoint: $params parameters, ~$(( CKPT_NEED >> 30 )) GiB; free: $(( $(free_bytes "$WORK") >> 30 )) GiB under $WORK, $(( $(free_bytes /dev/shm) >> 30 )) GiB in /dev/shm" | tee -a "$OUT/phases.txt"
}
free_bytes() { local v; v=$(df -B1 --output=avail "$1" 2>/dev/null | tail -1 | tr -dc 0-9); echo "${v:-0}"; }

# The runs folder of run NAME (offloaded: "offload" as $2).
runs_dir() {
  if [ "$(free_bytes "$WORK")" -ge "$CKPT_NEED" ] || [ "${2:-}" = offload ]; then echo "$WORK/runs"
  elif [ "$(free_bytes /dev/shm)" -ge "$CKPT_NEED" ]; then echo "/dev/shm/ft8b-runs"
  else echo "$WORK/runs"; fi
}
declare -A RUN_DIR

disk_check
RUNS=()
for p in "${PHASES[@]}"; do
  case $p in
    data) data_phase || { echo "no data: stopping"; exit 1; } ;;
    gpu2048) train_cmd ft-gpu2048 "$SEQ" "$STEPS"; phase gpu2048 $(( 150 + STEPS / 2 > 240 ? 150 + STEPS / 2 : 240 )) 90 "${TRAIN[@]}"
             keep_run ft-gpu2048 keep; RUNS+=("1x$SEQ=$OUT/ft-gpu2048") ;;
    generate) generate_phase; keep_run ft-gpu2048 ;;
    gpu4096) train_cmd ft-gpu4096 $(( SEQ * 2 )) $(( STEPS > 7 ? STEPS / 2 : 4 )); phase gpu4096 200 90 "${TRAIN[@]}"
             keep_run ft-gpu4096; RUNS+=("1x$(( SEQ * 2 ))=$OUT/ft-gpu4096") ;;
    offload) train_cmd ft-offload "$SEQ" "$OFFLOAD_STEPS" --set offload.optimizer=cpu --set train.grad_clip=0
             phase offload 240 120 "${TRAIN[@]}"; keep_run ft-offload; RUNS+=("1x$SEQ-offload-cpu=$OUT/ft-offload") ;;
  esac
done
keep_run ft-gpu2048  # a run of gpu2048 without generate: free its checkpoint too

existing=()
for r in "${RUNS[@]}"; do [ -f "${r#*=}/metrics.jsonl" ] && existing+=("$r"); done
if [ ${#existing[@]} -gt 0 ]; then
  { echo "# Fine-tune on one GPU, $(date -u +%F)"; echo
    echo "Shape: ${INIT_FROM:-preset $PRESET}; weights: ${INIT_FROM:-random init}; tokenizer: $TOK; device: $DEVICE."
    echo "Data: the Python standard library's prose, $(grep -o '"tokens": [0-9]*' "$WORK/data/meta.json" | head -1 | tr -dc 0-9) training tokens."
    echo; python3 bench/finetune_report.py "${existing[@]}"
    [ -f "$OUT/generate.txt" ] && { echo "### generate (greedy, 24 tokens, from ft-gpu2048's checkpoint; prompt \"$PROMPT\")"; echo; echo '```'; cat "$OUT/generate.txt"; echo '```'; }
    echo; echo '```'; cat "$OUT/phases.txt"; echo '```'; } > "$OUT/summary.md"
  cat "$OUT/summary.md"
fi
rm -rf /dev/shm/ft8b-runs
echo "total $(( $(date +%s) - START ))s"
