#!/usr/bin/env bash
# Longest sequence that trains on one GPU (issue 3): llama-1b, batch 1,
# ferrotron with train.checkpoint_layers=true (attention re-run too:
# checkpoint_keep_attention=false, the least memory) vs PyTorch with activation
# checkpointing. Doubling from 32768 costs minutes per engine (a step at
# 262144 tokens takes ~2.5 min), so each engine is first measured at two short
# lengths, its peak memory extrapolated linearly (activations grow linearly in
# the sequence with flash attention and checkpointing) to the GPU's memory, and
# then one step is run at the predicted maximum (rounded down to a multiple of
# STEP) and one at STEP more. If the prediction fails the script walks down.
#   ENGINES  (default "pytorch ferrotron") which engines, in order
#   STEP     (default 8192) the resolution of the answer
#   SECS     (default 540) seconds per engine before it stops trying. A step
#            near the limit takes ~5 minutes (attention is quadratic in the
#            sequence): run one engine per device call.
# Binary at .dev/ferrotron; results as JSON lines in $OUT/max_seq.jsonl, one
# line per attempt, failed attempts with the error's last line.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
B=${B:-./.dev/ferrotron}
STEP=${STEP:-8192}
L="--set model.preset=llama-1b --set device=cuda --set train.batch_size=1"
# max_position_embeddings in the export: above any length tried here.
[ -f /tmp/l1b_maxseq/config.json ] || $B bench train $L --set model.max_seq_len=1048576 --set train.seq_len=64 --warmup 0 --steps 1 --export-init /tmp/l1b_maxseq > /dev/null
TOTAL=$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1) * 1048576 ))

# One training step of `engine` at `seq`; prints its peak bytes (reserved
# for PyTorch, whose caching allocator holds more than it hands out), or
# nothing when the step failed. Every attempt lands in max_seq.jsonl.
attempt() {
  local engine=$1 seq=$2 line
  if [ "$engine" = ferrotron ]; then
    line=$(timeout $(( END - SECONDS )) $B bench train $L --set model.max_seq_len=$seq --set train.seq_len=$seq \
           --set train.checkpoint_layers=true --set train.checkpoint_keep_attention=false --warmup 0 --steps 1 2>$OUT/err.txt)
  else
    line=$(timeout $(( END - SECONDS )) python3 bench/torch_train.py --hf-dir /tmp/l1b_maxseq --batch 1 --seq $seq --warmup 0 --steps 1 \
           --checkpointing 2>$OUT/err.txt | tail -1)
  fi
  if ! echo "$line" | grep -q tokens_per_s; then
    local why; why=$(tail -1 $OUT/err.txt | tr -d '"\\' | cut -c1-300)
    [ $SECONDS -ge $END ] && why="stopped at this engine's time limit (not a failure to fit)"
    echo "{\"engine\":\"$engine\",\"seq_len\":$seq,\"failed\":\"$why\"}" >> $OUT/max_seq.jsonl
    echo "$engine $seq: failed" >&2
    return
  fi
  echo "$line" >> $OUT/max_seq.jsonl
  echo "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(max(d["peak_mem_bytes"], d.get("peak_reserved_bytes", 0)))'
  echo "$engine $seq: fits" >&2
}

for engine in ${ENGINES:-pytorch ferrotron}; do
  END=$(( SECONDS + ${SECS:-540} ))
  m1=$(attempt $engine 16384); m2=$(attempt $engine 32768)
  [ -n "$m1" ] && [ -n "$m2" ] || continue
  seq=$(python3 -c "s=($m2-$m1)/16384; print(int((32768 + ($TOTAL - $m2)/s) // $STEP * $STEP))")
  echo "$engine: ${m1} B at 16384, ${m2} B at 32768 -> predicted max $seq" >&2
  best=0
  # Walk down from the prediction until a step fits, then try one STEP more.
  while [ $seq -gt 32768 ] && [ $SECONDS -lt $END ]; do
    if [ -n "$(attempt $engine $seq)" ]; then best=$seq; break; fi
    seq=$(( seq - STEP ))
  done
  [ $best -gt 0 ] && [ $SECONDS -lt $END ] && attempt $engine $(( best + STEP )) > /dev/null
  echo "{\"engine\":\"$engine\",\"max_seq_fits\":$best,\"resolution\":$STEP,\"predicted_from\":[16384,32768],\"gpu_bytes\":$TOTAL}" | tee -a $OUT/max_seq.jsonl
done
