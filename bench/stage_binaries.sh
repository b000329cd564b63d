#!/usr/bin/env bash
# Build here and stage what the GPU machine runs into .dev/ (git-ignored via
# .git/info/exclude; name ".dev" in the device tool's `carry`): the
# ferrotron binary and the CUDA test executables, stripped.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
cargo build --release
mkdir -p .dev
cp target/release/ferrotron .dev/ferrotron
for t in ${TESTS:-cuda_ops cuda_model cuda_optim cuda_zero dist_nccl cuda_offload ulysses onebit}; do
  exe=$(cargo test --release --no-run --test $t --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  cp "$exe" .dev/$t
done
strip .dev/*
ls -la .dev
