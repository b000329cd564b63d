#!/usr/bin/env bash
# Hopper wgmma attention forward (attention_wgmma.cu) on an H200, one device call.
# Here first:   TESTS=cuda_ops bench/stage_binaries.sh     (carry .dev)
# There:        bash bench/gpu_attn_wgmma.sh               (writes $OUT/*)
# Steps, each in its own process under a timeout (a trapped or hung kernel
# then costs one step, not the call): GPU details; the wgmma parity test
# (TMA and cp.async kernels vs the CPU twin, fa2 backward on their output,
# T=4096 GQA, vs the fa2 forward); the fa2 parity tests; ptxas -v on the
# NVRTC PTX; the attention benchmark (fa2 / wgmma TMA / wgmma sync forward,
# fa2 backward); torch SDPA on the same shapes; one Nsight Compute profile
# of each wgmma kernel at D=128 T=16384 (its 33rd launch in attention_bench:
# 16 launches each at T=1024 and 4096 come first).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_CACHE=/tmp/fc
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=./.dev/cuda_ops
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; git rev-parse HEAD 2>/dev/null; date -u; } | tee "$OUT/env.txt"
SKIP=""
for k in tma sync; do
  timeout 300 $T --exact attention_wgmma_$k --nocapture > "$OUT/parity_wgmma_$k.log" 2>&1; rc=$?
  echo "attention_wgmma_$k rc=$rc" | tee -a "$OUT/parity_wgmma_$k.log"
  grep -E "panicked|failed|error" "$OUT/parity_wgmma_$k.log" | head -5
  [ $rc = 0 ] || SKIP="$SKIP,$([ $k = tma ] && echo wgmma || echo wgmma-sync)"
done
export ATTN_BENCH_SKIP=$SKIP
timeout 300 $T --test-threads=1 --nocapture --exact attention attention_simple_forward > "$OUT/parity_fa2.log" 2>&1; echo "fa2 parity rc=$?" | tee -a "$OUT/parity_fa2.log"
tail -3 "$OUT/parity_fa2.log"
PTXAS=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
$PTXAS -arch=sm_90a -v /tmp/fc/ptx/attention_wgmma-*.ptx -o /tmp/wgmma.cubin 2>&1 | grep -Ev "Compile time|^ptxas info    : Function properties" | tee "$OUT/ptxas_wgmma.txt"
(command -v cuobjdump >/dev/null && cuobjdump --dump-sass /tmp/wgmma.cubin | grep -cE "HGMMA" | sed 's/^/HGMMA instructions in SASS: /') | tee -a "$OUT/ptxas_wgmma.txt"
timeout 300 $T --ignored --nocapture --exact attention_bench 2>&1 | tee "$OUT/bench_ferrotron.log"
timeout 300 python3 bench/attn_torch.py 2>&1 | tee "$OUT/bench_torch.log"
if command -v ncu >/dev/null; then
  for k in wgmma_tma_fwd_d128 wgmma_fwd_d128; do
    timeout 240 ncu --clock-control none --kernel-name "$k" --launch-skip 32 --launch-count 1 --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      $T --ignored --nocapture --exact attention_bench > "$OUT/ncu_$k.txt" 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy" "$OUT/ncu_$k.txt" | head -8
  done
fi
ls -la "$OUT"
