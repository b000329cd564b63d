#!/usr/bin/env bash
# Session 7, call 6 (issue 14), after the NVMe tier's write-behind and
# pooled, parallel-copied I/O buffers (merge 9da2465): the CUDA offload
# tests (every tier against the plain run), then the 121-layer three-tier
# run again, 1 warm-up + 2 timed steps, to compare its steady step (57.4 s in
# call 2), disk bandwidth and host peak. Output in $OUT/call6.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r6; mkdir -p $R
trap 'tar czf $OUT/call6.tgz -C $R .' EXIT
timeout 70 ./.dev/cuda_offload --test-threads 1 --nocapture > $R/cuda_offload.log 2>&1; echo "cuda_offload rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked" $R/cuda_offload.log | cut -c1-200
OUT=$R timeout $((372 - SECONDS)) python3 bench/offload_max_params.py --engines mixed --layers mixed=121 --host-gb 85 --gpu-gb 60 \
  --optimizer adamw8bit --nvme-path /tmp/ft_nvme --steps 2 --timeout $((365 - SECONDS)) --seconds $((368 - SECONDS)) | cut -c1-2500
echo "largest done at ${SECONDS}s"
