#!/usr/bin/env bash
# Session 8, call 2 (issue 15): the block-per-row norm kernels and the
# attention forward's FFMA softmax. Parity first (cuda_ops all, cuda_model),
# then Nsight Compute on the norm kernels (KERNELS='norm|colsum'), the
# attention benchmark (wgmma TMA only), and the per-op profiles + plain
# timings of llama-1b 4x2048 and GPT-2 124M 32x1024 (compare call 1 and
# 12-02e call 1). Output tarred into $OUT/call2.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r2; mkdir -p $R
trap 'tar czf $OUT/call2.tgz -C $R .' EXIT
timeout 200 ./.dev/cuda_ops --test-threads 1 > $R/cuda_ops.log 2>&1; echo "cuda_ops rc=$? at ${SECONDS}s"
grep -E "^test |test result|panicked|exceeds|worst" $R/cuda_ops.log | grep -v " ok$" | cut -c1-300 | head -30
timeout 150 ./.dev/cuda_model --test-threads 1 > $R/cuda_model.log 2>&1; echo "cuda_model rc=$? at ${SECONDS}s"
grep -E "test result|panicked|FAILED" $R/cuda_model.log | cut -c1-300 | head
KERNELS='norm|colsum' OUT=$R/ncu timeout 120 bash bench/ncu_attention.sh > $R/ncu_norms.txt 2>&1; echo "ncu rc=$? at ${SECONDS}s"
grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput" $R/ncu/ncu_attention.txt | head -40
for shape in "llama-1b 4 2048" "gpt2-124m 32 1024"; do
  set -- $shape
  A="--set model.preset=$1 --set device=cuda --set train.batch_size=$2 --set train.seq_len=$3"
  timeout 60 ./.dev/ferrotron bench train $A --warmup 3 --steps 3 --profile > $R/prof_$1_$2x$3.txt 2>&1
  timeout 60 ./.dev/ferrotron bench train $A --warmup 3 --steps 10 > $R/plain_$1_$2x$3.txt 2>&1
  echo "$1 $2x$3 rc=$? at ${SECONDS}s: $(grep -o '"median_step_ms":[0-9.]*' $R/plain_$1_$2x$3.txt)"
done
ATTN_BENCH_SKIP=wgmma-sync,wgmma-sync-bwd timeout 120 ./.dev/cuda_ops --ignored --exact attention_bench --nocapture > $R/attn_bench.log 2>&1
echo "attn bench rc=$? at ${SECONDS}s"; grep "^|" $R/attn_bench.log
