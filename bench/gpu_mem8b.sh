#!/usr/bin/env bash
# llama3-8b 1x4096 with checkpointing and 8-bit AdamW on one GPU: measured
# peak memory against `ferrotron info`'s estimate, three settings (issue 15):
#   plain  one process, no ZeRO (fp32 master + bf16 copy of every weight)
#   z3     dist.zero_stage=3 in the same process (no bf16 copy of every
#          weight; units converted to bf16 when used; gradients straight
#          into the fp32 buffer)
#   lean   z3 + logits 1024 rows at a time + attention recomputed with the
#          blocks (train.checkpoint_keep_attention=false, as PyTorch's
#          per-block checkpointing does)
# and the ZeRO-at-world-1 CUDA tests. PyTorch + bitsandbytes measured 82.9 GB
# at these settings (bench/side_by_side_strong.sh B).
#
# Needs .dev/ from bench/stage_binaries.sh (TESTS="cuda_zero"); carry [".dev"].
# One nvidia-h200, about 5 minutes (8B init ~30 s per run, 7 steps each):
#   OUT=/tmp/mem8b bash bench/gpu_mem8b.sh
# Output: $OUT/mem8b.md (table), $OUT/<name>.json, $OUT/<name>.err, $OUT/cuda_zero.log.
set -uo pipefail
export CUDA_HOME=/usr/local/cuda NCCL_NVLS_ENABLE=0
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/mem8b}
mkdir -p "$OUT"
F=./.dev/ferrotron
[ -x "$F" ] || { echo "no $F: build with bench/stage_binaries.sh and carry .dev" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -x ./.dev/cuda_zero ]; then
  ./.dev/cuda_zero --nocapture > "$OUT/cuda_zero.log" 2>&1
  grep -E "^test |test result|panicked" "$OUT/cuda_zero.log"
fi

BASE="--set device=cuda --set model.preset=llama3-8b --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --warmup 2 --steps 5"
declare -A EXTRA=(
  [plain]=""
  [z3]="--set dist.zero_stage=3"
  [lean]="--set dist.zero_stage=3 --set train.logits_chunk=1024 --set train.checkpoint_keep_attention=false"
)
for name in plain z3 lean; do
  timeout 160 $F bench train $BASE ${EXTRA[$name]} > "$OUT/$name.json" 2> "$OUT/$name.err" || echo "$name failed: $(tail -2 "$OUT/$name.err")"
done

python3 - "$OUT" <<'EOF' | tee "$OUT/mem8b.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| setting | peak GB (measured) | info estimate GB | peak - estimate | tok/s | median step ms | losses |")
print("|---|---|---|---|---|---|---|")
for name in ["plain", "z3", "lean"]:
    lines = [l for l in (out / f"{name}.json").read_text().splitlines() if l.startswith("{")]
    if not lines:
        print(f"| {name} | failed (see {name}.err) | | | | | |")
        continue
    r = json.loads(lines[-1])
    peak, est = r["peak_mem_bytes"] / 1e9, r["estimate_bytes"] / 1e9
    losses = ", ".join(f"{x:.4f}" for x in r["losses"])
    print(f"| {name} | {peak:.2f} | {est:.2f} | {peak - est:+.2f} | {r['tokens_per_s']:,.0f} | {r['median_step_ms']:.1f} | {losses} |")
print("\nPyTorch + bitsandbytes AdamW8bit, same shape (bench/side_by_side_strong.sh B): 82.9 GB.")
EOF
