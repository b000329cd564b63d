#!/usr/bin/env bash
# Session 9, call 1 (issue 15): the first run of what session 8 wrote but
# could not run (add+LayerNorm, register-resident cross-entropy, RoPE
# loads-first, the ping-pong attention forward), then the side by side.
# 1. parity: cuda_ops (all; the ping-pong forward has its own test), cuda_model;
# 2. the attention benchmark, quick (D 64 at T 2048 and 16384, D 128 at
#    16384; TMA and ping-pong forwards, the TMA backward);
# 3. the forward for the rest of the call: ping-pong if its parity test
#    passed and it beat the TMA forward at D 64, T 2048 and T 16384 (llama-1b's
#    head size), else the default (echoed, and in $R/attn_choice.txt);
# 4. per-op profile + plain step of llama-1b 4x2048 (where the step goes now);
# 5. the strong-baseline side by side of group A, 2 repeats each, the missed
#    targets first, as many as the call's deadline lets through.
# Output in $OUT/call1/ (written there directly: what exists comes back even
# if the call is cut short).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=$OUT/call1; mkdir -p $R
timeout 90 ./.dev/cuda_ops --test-threads 1 > $R/cuda_ops.log 2>&1; echo "cuda_ops rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked" $R/cuda_ops.log | grep -v " ok$" | cut -c1-300 | head -20
timeout 30 ./.dev/cuda_model --test-threads 1 > $R/cuda_model.log 2>&1; echo "cuda_model rc=$? at ${SECONDS}s"
grep -E "test result|panicked" $R/cuda_model.log | cut -c1-300 | head -5
timeout 30 ./.dev/cuda_ops --exact speed_smoke --nocapture > $R/speed_smoke.log 2>&1; echo "speed_smoke rc=$? at ${SECONDS}s"
ATTN_BENCH_QUICK=1 ATTN_BENCH_SKIP=fa2,wgmma-sync,wgmma-sync-bwd timeout 45 ./.dev/cuda_ops --ignored --exact attention_bench --nocapture > $R/attn_bench.log 2>&1
echo "attn bench rc=$? at ${SECONDS}s"; grep "^|" $R/attn_bench.log
CHOICE=$(python3 - "$R" <<'PY'
import sys, re
r = sys.argv[1]
ok = re.search(r"test attention_wgmma_pingpong \.\.\. ok", open(f"{r}/cuda_ops.log").read())
rows = {}
for l in open(f"{r}/attn_bench.log"):
    c = [x.strip() for x in l.strip().strip('|').split('|')]
    if len(c) > 10 and c[0] == '64' and c[3] in ('2048', '16384'):
        rows[c[3]] = (float(c[7]), float(c[9]))  # TMA, ping-pong TFLOP/s
faster = len(rows) == 2 and all(pp > tma for tma, pp in rows.values())
print("wgmma-pp" if ok and faster else "default", rows)
PY
)
echo "forward for the rest of the call: $CHOICE" | tee $R/attn_choice.txt
[[ $CHOICE == wgmma-pp* ]] && export FERROTRON_ATTN=wgmma-pp
A="--set model.preset=llama-1b --set device=cuda --set train.batch_size=4 --set train.seq_len=2048"
timeout 60 ./.dev/ferrotron bench train $A --warmup 3 --steps 3 --profile > $R/prof_llama-1b_4x2048.txt 2>&1
timeout 60 ./.dev/ferrotron bench train $A --warmup 3 --steps 10 > $R/plain_llama-1b_4x2048.txt 2>&1
echo "llama-1b 4x2048 rc=$? at ${SECONDS}s: $(grep -o '"median_step_ms":[0-9.]*' $R/plain_llama-1b_4x2048.txt)"
OUT=$R/strong REPEATS=2 EST_PCT=80 DEADLINE_S=$((560 - SECONDS)) timeout $((570 - SECONDS)) bash bench/side_by_side_strong.sh llama1b-4x2048 gpt2-32x1024 llama1b-8x2048 gpt2-8x1024 > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
