#!/usr/bin/env bash
# Nsight Compute profiles of the Hopper attention kernels as text (issue 15
# asks for them committed): the wgmma forward (D = 64, 128) and the TMA
# backward's dK/dV and dQ kernels, each profiled once on the shapes of
# `cuda_ops --ignored attention_bench` (the first launches of each name).
# Run on the GPU machine from the repo root with .dev/cuda_ops staged
# (`TESTS=cuda_ops bash bench/stage_binaries.sh`); root there, so the
# performance counters are readable. Output: $OUT/ncu_attention.txt (the
# sections below, per kernel) and $OUT/ncu_attention.csv (raw metrics).
# Not run yet.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ncu_out}; mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
[ -x "$NCU" ] || { echo "ncu not found (tried PATH and /usr/local/cuda/bin)"; exit 2; }
"$NCU" --version | tee "$OUT/ncu_version.txt"
# Each kernel name once per shape it is launched with, at most 8 launches in
# all (ncu replays every profiled launch ~40 times: a few minutes).
"$NCU" --target-processes all --kernel-name regex:'wgmma_(fwd|tma_bwd_dkv|tma_bwd_dq)_d(64|128)' --launch-count 8 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  --export "$OUT/ncu_attention" --force-overwrite \
  ./.dev/cuda_ops --ignored --exact attention_bench --nocapture > "$OUT/ncu_run.log" 2>&1
echo "ncu rc=$?"
"$NCU" --import "$OUT/ncu_attention.ncu-rep" --page details > "$OUT/ncu_attention.txt" 2>&1
"$NCU" --import "$OUT/ncu_attention.ncu-rep" --page raw --csv > "$OUT/ncu_attention.csv" 2>&1
grep -E "^  [a-z_0-9]+\(|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Duration" "$OUT/ncu_attention.txt" | head -60
