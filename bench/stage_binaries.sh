#!/usr/bin/env bash
# Build here and stage what the GPU machine runs into .dev/ (git-ignored via
# .git/info/exclude; name ".dev" in the device tool's `carry`): the
# ferrotron binary and the CUDA test executables, stripped; the Llama 3
# tokenizer (.dev/llama3) and DeepSpeed's wheels (.dev/wheels) when
# $ASSETS (default /work/assets) has them.
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
find .dev -maxdepth 1 -type f -exec strip {} +
# Assets that cannot be committed (bench/assets_llama3.md) and wheels for
# the machine without internet (bench/deepspeed_wheels.sh), when made here.
ASSETS=${ASSETS:-/work/assets}
if [ -f "$ASSETS/llama3/tokenizer.json" ]; then
  mkdir -p .dev/llama3 && cp "$ASSETS"/llama3/tokenizer.json "$ASSETS"/llama3/tokenizer_config.json .dev/llama3/
fi
[ -d "$ASSETS/wheels" ] && mkdir -p .dev/wheels && cp "$ASSETS"/wheels/*.whl .dev/wheels/
ls -la .dev
