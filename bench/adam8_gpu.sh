#!/usr/bin/env bash
# 8-bit AdamW on one GPU (issue 15), every kernel variant in one device call:
# bit-exactness against the CPU (cuda_ops: "0 differ from the CPU"), then
# `ferrotron bench optim` on llama-1b's parameters (step time, fraction of
# the measured copy bandwidth), then an Nsight Compute profile of one step's
# launch of the default variant if ncu reads counters there.
# Stage first (here): TESTS="cuda_ops cuda_optim" bash bench/stage_binaries.sh
# Run there:          bash bench/adam8_gpu.sh        (carry .dev; ~5 min)
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda
OUT=${OUT:-/tmp/adam8}; mkdir -p $OUT
VARIANTS=${VARIANTS:-prefetch prefetch3 plain pertensor}
BENCH="./.dev/ferrotron bench optim --set model.preset=llama-1b --set device=cuda --set optimizer.name=adamw8bit"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
for v in $VARIANTS; do
  FERROTRON_ADAM8=$v timeout 120 ./.dev/cuda_ops adamw8bit --test-threads 1 --nocapture > $OUT/cuda_ops_$v.txt 2>&1
  echo "== $v: cuda_ops adamw8bit rc=$? $(grep -c '0 differ from the CPU' $OUT/cuda_ops_$v.txt) code checks at 0 differ," \
       "$(grep -h 'differ from the CPU' $OUT/cuda_ops_$v.txt | grep -vc ': 0 differ') not at 0; $(grep -h 'test result' $OUT/cuda_ops_$v.txt)"
done
timeout 120 ./.dev/cuda_optim --nocapture > $OUT/cuda_optim.txt 2>&1; echo "cuda_optim rc=$? $(grep -h 'adamw8bit .*worst' $OUT/cuda_optim.txt)"
for v in $VARIANTS; do
  FERROTRON_ADAM8=$v timeout 120 $BENCH --warmup 3 --steps 20 > $OUT/bench_$v.json 2>&1
  echo "== $v: $(grep -o '"median_step_ms":[0-9.]*\|"fraction_of_copy":[0-9.]*\|"copy_bytes_per_s":[0-9.e+]*' $OUT/bench_$v.json | tr '\n' ' ')"
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  # The third launch of the kernel: one whole step of the segmented variant.
  FERROTRON_ADAM8=prefetch timeout 240 $NCU --clock-control none -k regex:adamw8bit_ --launch-skip 2 --launch-count 1 --set full \
    $BENCH --warmup 0 --steps 3 > $OUT/ncu_prefetch.txt 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Executed Ipc Active|Warp Cycles Per Issued|Local Memory Spilling|Bank Conflicts|Block Limit Registers|Grid Size" $OUT/ncu_prefetch.txt | head -30
fi
