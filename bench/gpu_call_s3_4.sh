# Session 3, call 4 (after merging ops15, zero17, ckptfast, offload14): every
# CUDA test of the merged tree, ZeRO/NCCL at world 1 and llama-1b/GPT-2 speed
# (bench/gpu_zero.sh), then the checkpoint overhead (no checkpoint vs async).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
timeout 100 ./.dev/cuda_offload --nocapture --test-threads 1 > $OUT/cuda_offload.log 2>&1; echo "cuda_offload rc=$?"; grep -E "test result|panicked" $OUT/cuda_offload.log
timeout 300 bash bench/gpu_zero.sh; echo "gpu_zero rc=$?"
OUT=$OUT/ckpt MODES="none async" timeout $((585 - SECONDS)) bash bench/ckpt_overhead.sh > $OUT/ckpt_stdout.txt 2>&1; echo "ckpt rc=$?"
tail -4 $OUT/ckpt_stdout.txt; grep -h '"ckpt"' $OUT/ckpt/async.metrics.jsonl | head -3; grep -i "page-locked" $OUT/ckpt/async.log | head -3
