#!/usr/bin/env bash
# The 8-bit AdamW kernel checked without a GPU: the kernel at REF (default
# 2b52f37, one launch per tensor, measured bit-identical to the CPU on an
# H200) and the working tree's (one tensor, or a segment table; with and
# without prefetch), both compiled for the host (cuda_emu.h: one std::thread per
# CUDA thread, barriers for __syncthreads and warp shuffles, IEEE float ops
# without contraction for the _rn intrinsics) and run on the same random
# state for 3 steps: params, shadow, absmax and codes must be bit-identical.
# Sizes around the 256-element quant block and a set of ten tensors of odd
# sizes with gaps, aligned (vector path) and not, fp32 and bf16 gradients,
# a zeroed block, an infinite gradient, and more quant blocks than the
# emulated grid covers (grid-stride loop, prefetch of the next block).
#   bash tools/adamw8bit_emu/run.sh [REF]     (minutes: 256 threads per block)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ref=${1:-2b52f37}
tmp=$(mktemp -d)
git -C "$here" show "$ref:src/backend/cuda/ops/adamw8bit.cu" | sed 's/extern "C" //' > "$tmp/old_body.cu"
sed 's/extern "C" //' "$here/../../src/backend/cuda/ops/adamw8bit.cu" > "$tmp/new_body.cu"
cp "$here/main.cpp" "$here/cuda_emu.h" "$tmp/"
g++ -std=c++20 -O1 -ffp-contract=off -pthread -o "$tmp/emu" "$tmp/main.cpp"
"$tmp/emu"
