# Session 6, call 2 (issue 14): the largest model (121 layers at llama3-8b
# width, 27.44B, three tiers: offload.gpu_gb=60, host_gb=85, the rest in
# files) for a warm-up step and 2 timed steps: steady-state step, tokens/s,
# MFU, GPU busy fraction (nvidia-smi dmon), PCIe and disk bandwidth over the
# timed steps; initial weights now made unit by unit (host peak expected
# ~101.7 GB instead of 111.0). Then ferrotron GPU-only AdamW at its limit
# with the lean settings (no bf16 shadow, bf16 gradients, logits 1024 rows,
# attention recomputed): 42, 43, 44 layers. Output tarred into $OUT/call2.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r2; mkdir -p $R
trap 'tar czf $OUT/call2.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; } > $R/gpu.txt
./.dev/ferrotron info --set model.preset=llama3-8b --set model.n_layers=121 --set device=cuda --set train.batch_size=1 \
  --set train.seq_len=2048 --set model.max_seq_len=2048 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit \
  --set train.grad_clip=0 --set offload.optimizer=nvme --set offload.path=\"/tmp/ft_nvme\" --set offload.host_gb=85 \
  --set offload.gpu_gb=60 > $R/info_121.txt 2>&1
OUT=$R timeout 480 python3 bench/offload_max_params.py --engines mixed --layers mixed=121 --host-gb 85 --gpu-gb 60 \
  --optimizer adamw8bit --nvme-path /tmp/ft_nvme --steps 2 --timeout 470 --seconds 475 | cut -c1-1500
echo "largest done at ${SECONDS}s"
LEAN="--ft-set dist.zero_stage=3 --ft-set train.grad_dtype=bf16 --ft-set train.logits_chunk=1024 --ft-set train.checkpoint_keep_attention=false"
OUT=$R timeout $((590 - SECONDS)) python3 bench/offload_max_params.py --engines gpu --layers gpu=42,43,44 --optimizer adamw $LEAN \
  --timeout 120 --seconds $((580 - SECONDS)) | cut -c1-700
echo "gpu adamw done at ${SECONDS}s"
