# Session 6, call 3 (issue 14): each of ferrotron's other modes at its own
# limit, llama3-8b width, 1x2048, block checkpointing, 8-bit AdamW, one step
# per size, ascending until one fails (out of memory, or refused before
# starting because host memory or disk is short): the cpu tier alone (86, 88
# layers: `info` host 121.1 / 123.5 GiB), the nvme tier alone (40, 42
# layers: disk 54.9 / ~57.4 GiB), GPU-only with the lean settings (77, 78,
# 79 layers: `info` 136.4 / 138.0 / 139.7 GiB). Output in $OUT/call3.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r3; mkdir -p $R
trap 'tar czf $OUT/call3.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; free -g | head -2; df -h /tmp | tail -1; } > $R/gpu.txt
# Unit-by-unit initial weights on CUDA: the offloaded runs must still track the plain run (whose init is whole).
timeout 90 ./.dev/cuda_offload --exact offloaded_cuda_runs_track_the_plain_run three_tiers_track_plain_and_single_tier_on_cuda \
  --test-threads 1 --nocapture > $R/cuda_offload.log 2>&1; echo "cuda_offload rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked" $R/cuda_offload.log | cut -c1-200
OUT=$R timeout 250 python3 bench/offload_max_params.py --engines cpu --layers cpu=86,88 --optimizer adamw8bit \
  --timeout 230 --seconds 240 | cut -c1-900
echo "cpu done at ${SECONDS}s"
OUT=$R timeout $((420 - SECONDS)) python3 bench/offload_max_params.py --engines nvme --layers nvme=40,42 --optimizer adamw8bit \
  --nvme-path /tmp/ft_nvme --timeout 200 --seconds $((410 - SECONDS)) | cut -c1-900
echo "nvme done at ${SECONDS}s"
LEAN="--ft-set dist.zero_stage=3 --ft-set train.grad_dtype=bf16 --ft-set train.logits_chunk=1024 --ft-set train.checkpoint_keep_attention=false"
OUT=$R timeout $((590 - SECONDS)) python3 bench/offload_max_params.py --engines gpu --layers gpu=77,78,79 --optimizer adamw8bit $LEAN \
  --timeout 100 --seconds $((580 - SECONDS)) | cut -c1-700
echo "gpu 8-bit done at ${SECONDS}s"
