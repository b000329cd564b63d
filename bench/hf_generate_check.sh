#!/usr/bin/env bash
# One GPU call (issue 14, Hugging Face checkpoints): the rope parity tests
# (plain and Llama 3 scaling), embedding and loss at Llama 3's vocabulary
# (128256, ids above 65535), the Llama 3.2-style fixture on CUDA
# (logits, greedy tokens, lr-0 fine-tune export, head size 16 error), then
# bench/hf_generate_check.py: greedy generation of ferrotron on CPU and
# CUDA vs transformers and the lr-0 fine-tune/export on both devices.
# Run from the repo root on the GPU machine with .dev/ staged by
# bench/stage_binaries.sh (carry .dev). Logs and a JSON report go to $OUT.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; git rev-parse HEAD 2>/dev/null; date -u; } | tee "$OUT/env.txt"
status=0
./.dev/cuda_ops rope embedding softmax_xent nvrtc --test-threads=1 --nocapture 2>&1 | tee "$OUT/cuda_ops_hf.log" || status=1
./.dev/cuda_model llama32 lr_0 unsupported_head --test-threads=1 --nocapture 2>&1 | tee "$OUT/cuda_model_hf.log" || status=1
python3 bench/hf_generate_check.py --ferrotron .dev/ferrotron --work /tmp/hfgen --out "$OUT" 2>&1 | grep -v '^Loading weights\|^Writing' | tee "$OUT/hf_generate_check.log" || status=1
echo "exit status $status"
exit $status
