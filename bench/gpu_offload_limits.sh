#!/usr/bin/env bash
# Issue 14's measurements still missing after session 6 (2026-12-02e), one
# device call per phase, each with the whole call's time (an offloaded
# start-up at ~20B takes minutes; session 6's tries with 160-230 s timeouts
# did not finish). Stage with `bash bench/stage_binaries.sh` and carry the
# ferrotron binary (e.g. .devpack as in bench/gpu_call_s6_*.sh).
#   bash bench/gpu_offload_limits.sh cpu      # cpu tier alone: 88 layers (info: host 123.5 of ~124 GiB), then 90
#   bash bench/gpu_offload_limits.sh nvme     # nvme tier alone: 40 layers (disk 54.9 GiB), then 42
#   bash bench/gpu_offload_limits.sh largest  # 121 layers, three tiers, 1 warm-up + 2 timed steps:
#                                             # steady step, GPU busy fraction, PCIe and disk bandwidth
# Each line of $OUT/offload_max_params.jsonl has the start-up time and its
# phases (`startup_s`, `startup_phases`), and with --steps 2 the `steady`
# window (nvidia-smi dmon SM busy %, PCIe rx/tx, /proc/PID/io disk bytes).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=${FERROTRON_BIN:-./.dev/ferrotron}
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/offload_limits}; mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; } > "$OUT/gpu.txt"
case ${1:-largest} in
  cpu) python3 bench/offload_max_params.py --engines cpu --layers cpu=88,90 --optimizer adamw8bit --steps 2 \
         --timeout 560 --seconds 575 ;;
  nvme) python3 bench/offload_max_params.py --engines nvme --layers nvme=40,42 --optimizer adamw8bit \
         --nvme-path /tmp/ft_nvme --timeout 560 --seconds 575 ;;
  largest) python3 bench/offload_max_params.py --engines mixed --layers mixed=121 --host-gb 85 --gpu-gb 60 \
         --optimizer adamw8bit --nvme-path /tmp/ft_nvme --steps 2 --timeout 575 --seconds 580 ;;
  *) echo "phase: cpu | nvme | largest" >&2; exit 2 ;;
esac | cut -c1-1500
