#!/usr/bin/env bash
# Hopper wgmma attention BACKWARD (attention_wgmma_bwd.cu) on an H200, one device call.
# Here first:   TESTS=cuda_ops bench/stage_binaries.sh     (carry .dev)
# There:        bash bench/gpu_attn_wgmma_bwd.sh           (writes $OUT/*)
# Steps, each in its own process under a timeout (a trapped or hung kernel
# then costs one step, not the call): GPU details; the two parity tests
# (attention_wgmma_bwd: warp-specialized TMA kernels, FERROTRON_ATTN_BWD=wgmma;
# attention_wgmma_bwd_sync: cp.async kernels, wgmma-sync), each against the
# CPU twin (every `attention` case, T=1000 and 4096 GQA) and against the fa2
# backward, with ATTN_BWD_DEBUG=1 (the first failing elements of a failing
# section are printed with their batch / token / head / dim); ptxas -v and
# the HGMMA count of the backward's PTX (spills, ignored setmaxnreg C7508,
# serialized wgmma C7510 show here); the attention benchmark (the columns
# of a kernel that failed its parity test are left out); one Nsight Compute
# profile of each warp-specialized kernel at D=128 T=16384 (its 33rd launch
# in attention_bench: 16 launches each at T=1024 and 4096 come first).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_CACHE=/tmp/fc
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=./.dev/cuda_ops
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader; git rev-parse HEAD 2>/dev/null; date -u; } | tee "$OUT/env.txt"
SKIP=""
for k in wgmma_bwd wgmma_bwd_sync; do
  ATTN_BWD_DEBUG=1 timeout 240 $T --exact attention_$k --nocapture > "$OUT/parity_$k.log" 2>&1; rc=$?
  echo "attention_$k rc=$rc" | tee -a "$OUT/parity_$k.log"
  grep -E "panicked|failed|error|ATTN_BWD_DEBUG|^  b=" "$OUT/parity_$k.log" | head -24
  [ $rc = 0 ] || SKIP="$SKIP,$([ $k = wgmma_bwd ] && echo wgmma-bwd || echo wgmma-sync-bwd)"
done
export ATTN_BENCH_SKIP=$SKIP
PTXAS=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
$PTXAS -arch=sm_90a -v /tmp/fc/ptx/attention_wgmma_bwd-*.ptx -o /tmp/wgmma_bwd.cubin 2>&1 | grep -Ev "Compile time|^ptxas info    : Function properties" | tee "$OUT/ptxas_wgmma_bwd.txt"
(command -v cuobjdump >/dev/null && cuobjdump --dump-sass /tmp/wgmma_bwd.cubin | grep -cE "HGMMA" | sed 's/^/HGMMA instructions in SASS: /') | tee -a "$OUT/ptxas_wgmma_bwd.txt"
timeout 240 $T --ignored --nocapture --exact attention_bench 2>&1 | tee "$OUT/bench_ferrotron.log" | grep -E "^\||previous"
# The profiles only when both kernels passed and the call has time left (the
# device tool stops a command at 600 s).
if command -v ncu >/dev/null && [ -z "$SKIP" ] && [ $SECONDS -lt 330 ]; then
  for k in wgmma_tma_bwd_dkv_d128 wgmma_tma_bwd_dq_d128; do
    timeout 130 ncu --clock-control none --kernel-name "$k" --launch-skip 32 --launch-count 1 --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      $T --ignored --nocapture --exact attention_bench > "$OUT/ncu_$k.txt" 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy" "$OUT/ncu_$k.txt" | head -8
  done
fi
ls -la "$OUT"
