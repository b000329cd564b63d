#!/usr/bin/env bash
# Stages DeepSpeed 0.19.8 and its dependencies as wheels for the GPU machine
# (no internet there; Python 3.12, x86_64, torch and numpy already
# installed), for bench/deepspeed_offload.py. Run here, on a machine that
# reaches PyPI:  bash bench/deepspeed_wheels.sh [DIR]   (default /work/assets/wheels)
# The integrator carries DIR as .dev/wheels (~6 MB).
# DeepSpeed is published as a source archive only; it is built into a
# pure-Python wheel here without torch, so no op is compiled in: the CPU Adam
# op is built on the GPU machine at first use (bench/deepspeed_offload.py
# times it). numpy and torch are not staged (the machine has them).
set -euo pipefail
DIR=${1:-/work/assets/wheels}
mkdir -p "$DIR"
src=$(mktemp -d)
pip download deepspeed==0.19.8 --no-deps --no-binary :all: -d "$src"
pip wheel --no-deps -w "$DIR" "$src"/deepspeed-0.19.8.tar.gz
pip download --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DIR" einops hjson msgpack ninja packaging psutil py-cpuinfo pydantic tqdm
rm -rf "$src"
ls -la "$DIR"
sha256sum "$DIR"/*.whl
