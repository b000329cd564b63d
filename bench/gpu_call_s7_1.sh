#!/usr/bin/env bash
# Session 7, call 1 (issue 14): the disk's direct-I/O bandwidth (2 GiB dd),
# then the cpu tier alone at its limit: llama3-8b width, 1x2048, block
# checkpointing, 8-bit AdamW, grad_clip 0; 88 layers (`info` host 121.05
# GiB) then 90 (123.5 GiB), each 1 warm-up + 2 timed steps (steady step,
# GPU busy fraction, PCIe). The run prints its start-up progress every 15 s
# and each slow step, so a try stopped by its timeout still says how far it
# got. Output in $OUT/call1.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r1; mkdir -p $R
trap 'tar czf $OUT/call1.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; grep MemAvailable /proc/meminfo; } > $R/gpu.txt
cat $R/gpu.txt
{ echo "write 2 GiB, O_DIRECT, 64 MiB blocks:"; dd if=/dev/zero of=/tmp/ddtest bs=64M count=32 oflag=direct 2>&1 | tail -1
  echo "read it back, O_DIRECT:"; dd if=/tmp/ddtest of=/dev/null bs=64M iflag=direct 2>&1 | tail -1; rm -f /tmp/ddtest; } > $R/disk.txt
cat $R/disk.txt; echo "disk done at ${SECONDS}s"
OUT=$R timeout $((585 - SECONDS)) python3 bench/offload_max_params.py --engines cpu --layers cpu=88,90 --optimizer adamw8bit \
  --steps 2 --timeout 420 --seconds $((575 - SECONDS)) | cut -c1-1500
echo "cpu done at ${SECONDS}s"
