#!/usr/bin/env bash
# Offload host-memory diet (issue 14), on the GPU machine, after
# `TESTS=cuda_offload bench/stage_binaries.sh` (carry .dev):
# 1. the CUDA offload tests (bf16 images now travel in the pooled gradient
#    buffers; with clipping the gradients stay on the device until the norm);
# 2. for each VARIANTS entry (optimizer,params,n_layers[,tier] of the
#    llama3-8b shape; batch 1 x 2048, checkpointing; tier = offload.optimizer,
#    cpu unless named, nvme under /tmp/ft_nvme), `info`'s host bytes next to the
#    peak resident memory of a 2-step `bench train` (the process's whole
#    peak: CUDA context, data and start-up included, so expect it a few GB
#    above `info`'s offload bytes, never tens of GB).
# Output: $OUT/hostmem.txt (one line per variant) and the logs.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader; nproc; free -g | head -2; } > $OUT/gpu.txt
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 400 ./.dev/cuda_offload --nocapture > $OUT/cuda_offload.log 2>&1
  echo "cuda_offload exit $?" | tee -a $OUT/hostmem.txt
  grep -E "^test |test result|panicked|peak GPU" $OUT/cuda_offload.log | head -20
fi
for v in ${VARIANTS:-adamw8bit,none,32 adamw,none,32}; do
  IFS=, read -r opt params layers tier <<< "$v"
  tier=${tier:-cpu}
  sets="--set model.preset=llama3-8b --set model.n_layers=$layers --set device=cuda --set train.batch_size=1 --set train.seq_len=2048
        --set train.checkpoint_layers=true --set offload.optimizer=$tier --set offload.params=$params --set optimizer.name=$opt
        --set offload.path=\"/tmp/ft_nvme\""
  info=$(./.dev/ferrotron info $sets | grep "host (offload")
  S=$(date +%s)
  python3 - ./.dev/ferrotron bench train $sets --warmup 1 --steps 2 > $OUT/bench_${opt}_${params}_${layers}_${tier}.json 2> $OUT/bench_${opt}_${params}_${layers}_${tier}.err <<'EOF'
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print(f"max_rss_gib {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f}", file=sys.stderr)
sys.exit(r.returncode)
EOF
  rc=$?
  rss=$(grep max_rss_gib $OUT/bench_${opt}_${params}_${layers}_${tier}.err)
  echo "$v: exit $rc after $(( $(date +%s) - S )) s; $rss; info:$info" | tee -a $OUT/hostmem.txt
  tail -3 $OUT/bench_${opt}_${params}_${layers}_${tier}.err
done
