# Session 5, call 2: binaries of a trial merge (main + ckptstream + gradbf16 +
# hopperbwd, commits in bench/results/gpu_2026-12-02d.md). Parity of the new
# Hopper attention backward (with mismatch printing), bf16 gradients (parity,
# 20-step curves, llama3-8b lean memory and speed), the mixed-tier CUDA test,
# the attention benchmark. Each step has a timeout; a step that would pass
# the call's deadline is skipped. All output tarred into $OUT/call2.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r2; mkdir -p $R
trap 'tar czf $OUT/call2.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; } > $R/gpu.txt
DEADLINE=${DEADLINE:-575}
t() { local name=$1 secs=$2; shift 2
  if [ $((SECONDS + secs)) -gt $DEADLINE ]; then echo "$name skipped at ${SECONDS}s"; return; fi
  local s=$SECONDS; timeout $secs "$@" > $R/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"
  grep -hE "^test |test result|panicked|FAILED|mismatch|worst|bf16 grads|largest relative gap|final loss|vs " $R/$name.log | cut -c1-240 | head -30; }
F=./.dev/ferrotron
LEAN="--set device=cuda --set model.preset=llama3-8b --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --set dist.zero_stage=3 --set train.logits_chunk=1024 --set train.checkpoint_keep_attention=false --warmup 2 --steps 4"
ATTN_BWD_DEBUG=1 t wgmma_bwd 100 ./.dev/cuda_ops attention_wgmma_bwd --nocapture --test-threads 1
t ops_bf16 60 ./.dev/cuda_ops bf16_gradient --nocapture
t offload_mixed 90 ./.dev/cuda_offload mixed --nocapture --test-threads 1
t lean_bf16 120 $F bench train $LEAN --set train.grad_dtype=bf16
grep -h '^{' $R/lean_bf16.log | grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|"estimate_bytes":[0-9]*' | tr '\n' ' '; echo
t attn_bench 100 ./.dev/cuda_ops attention_bench --ignored --nocapture
grep -h "^|" $R/attn_bench.log | head -12
t grad_bf16 110 ./.dev/cuda_grad_bf16 --nocapture --test-threads 1
t lean_fp32 120 $F bench train $LEAN --set train.grad_dtype=fp32
grep -h '^{' $R/lean_fp32.log | grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|"estimate_bytes":[0-9]*' | tr '\n' ' '; echo
