#!/usr/bin/env bash
# Nsight Compute profiles as text (issue 15 asks for them committed): the
# Hopper attention kernels (wgmma TMA forward, the backward's delta, dK/dV
# and dQ kernels) at llama-1b's shapes (4x2048 and 1x32768, head size 64)
# and at head size 128 (1x16384), and the row ops that bound llama-1b's step
# (RMSNorm and LayerNorm forward and backward with their column sums, SwiGLU,
# RoPE): one launch each, from
# `cuda_ops --ignored profile_shapes`.
# Run on the GPU machine from the repo root with .dev/cuda_ops staged
# (`TESTS=cuda_ops bash bench/stage_binaries.sh`); root there, so the
# performance counters are readable. Output: $OUT/ncu_attention.txt (the
# sections below, per kernel) and $OUT/ncu_attention.csv (raw metrics).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ncu_out}; mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
[ -x "$NCU" ] || { echo "ncu not found (tried PATH and /usr/local/cuda/bin)"; exit 2; }
"$NCU" --version | tee "$OUT/ncu_version.txt"
# Every launch of those kernels in the test (about 20; ncu replays each
# ~40 times: a few minutes).
# KERNELS (a regex) narrows the set, e.g. KERNELS='norm|colsum' for the norms.
KERNELS=${KERNELS:-'wgmma|attn_bwd_delta|rmsnorm|layernorm|colsum_finish|swiglu|rope'}
"$NCU" --target-processes all --kernel-name regex:"$KERNELS" --launch-count 40 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section InstructionStats \
  --export "$OUT/ncu_attention" --force-overwrite \
  ./.dev/cuda_ops --ignored --exact profile_shapes --nocapture > "$OUT/ncu_run.log" 2>&1
echo "ncu rc=$?"
"$NCU" --import "$OUT/ncu_attention.ncu-rep" --page details > "$OUT/ncu_attention.txt" 2>&1
"$NCU" --import "$OUT/ncu_attention.ncu-rep" --page raw --csv > "$OUT/ncu_attention.csv" 2>&1
grep -E "^  [a-z_0-9]+\(|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Achieved Occupancy|Duration" "$OUT/ncu_attention.txt" | head -150
