#!/usr/bin/env bash
# Mixed offload tiers (offload.host_gb, issue 14) on one nvidia-h200, after
# `TESTS=cuda_offload bash bench/stage_binaries.sh` (carry .dev): (1) the
# CUDA offload tests, with mixed_tiers_equal_single_tiers_on_cuda; (2)
# `info` for the sizes tried, so the run's refusals and RSS can be read
# against it; (3) the largest llama3-8b-width model that trains one step:
# PyTorch AdamW on the GPU, then ferrotron with the largest units resident
# in host memory (HOST_GB, 10^9 bytes) and the rest in files under /tmp.
# Two device calls: `bash bench/gpu_tiers.sh tests` (1-2, ~3 min) and
# `bash bench/gpu_tiers.sh max` (2-3, ~9.5 min); PT_LAYERS / MIXED_LAYERS /
# HOST_GB override the sizes.
# Three tiers (offload.gpu_gb): `bash bench/gpu_tiers.sh three` (one call,
# ~9.5 min): `info` and one step of 121 and 124 layers (THREE_LAYERS) with
# the largest units' master + 8-bit state on the GPU (GPU_GB, default 60),
# the next in host memory (THREE_HOST_GB, default 85), the rest in files;
# 121 layers = 27.44B parameters = 3.0x PyTorch AdamW's 9.12B.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
cd "$(dirname "$0")/.."
HOST_GB=${HOST_GB:-95}
PT_LAYERS=${PT_LAYERS:-36,37,38}
MIXED_LAYERS=${MIXED_LAYERS:-100,108,112}
GPU_GB=${GPU_GB:-60}
THREE_HOST_GB=${THREE_HOST_GB:-85}
THREE_LAYERS=${THREE_LAYERS:-121,124}
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; } > $OUT/gpu.txt
cat $OUT/gpu.txt
PHASE=${1:-max}
if [ "$PHASE" = tests ]; then
timeout 420 ./.dev/cuda_offload --nocapture --test-threads 1 > $OUT/cuda_offload.log 2>&1
echo "cuda_offload exit $?" >> $OUT/cuda_offload.log
grep -E "^test |test result|panicked|mixed vs|three vs" $OUT/cuda_offload.log | cut -c1-250
fi
if [ "$PHASE" = three ]; then
for L in ${THREE_LAYERS//,/ }; do
  ./.dev/ferrotron info --set model.preset=llama3-8b --set model.n_layers=$L --set device=cuda --set train.batch_size=1 \
    --set train.seq_len=2048 --set model.max_seq_len=2048 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit \
    --set train.grad_clip=0 --set offload.optimizer=nvme --set offload.path=\"/tmp/ft_nvme\" --set offload.host_gb=$THREE_HOST_GB \
    --set offload.gpu_gb=$GPU_GB > $OUT/info_three_$L.txt 2>&1
  grep -E "^  total  |^  weights|host \(|disk \(|placement" $OUT/info_three_$L.txt | sed "s/^/L=$L /" | cut -c1-260
done
python3 bench/offload_max_params.py --engines mixed --layers mixed=$THREE_LAYERS --host-gb $THREE_HOST_GB --gpu-gb $GPU_GB \
  --optimizer adamw8bit --nvme-path /tmp/ft_nvme --timeout 280 --seconds 570 | cut -c1-700
exit 0
fi
for L in ${MIXED_LAYERS//,/ }; do
  ./.dev/ferrotron info --set model.preset=llama3-8b --set model.n_layers=$L --set device=cuda --set train.batch_size=1 \
    --set train.seq_len=2048 --set model.max_seq_len=2048 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit \
    --set train.grad_clip=0 --set offload.optimizer=nvme --set offload.path=\"/tmp/ft_nvme\" --set offload.host_gb=$HOST_GB \
    > $OUT/info_mixed_$L.txt 2>&1
  grep -E "^  total  |host \(|disk \(|placement" $OUT/info_mixed_$L.txt | sed "s/^/L=$L /" | cut -c1-220
done
[ "$PHASE" = tests ] && exit 0
python3 bench/offload_max_params.py --engines pytorch,mixed --layers pytorch=$PT_LAYERS --layers mixed=$MIXED_LAYERS \
  --host-gb $HOST_GB --optimizer adamw8bit --nvme-path /tmp/ft_nvme --timeout 270 --seconds 560 | cut -c1-700
