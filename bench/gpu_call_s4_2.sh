# Session 4, call 2 (the commit of this script): after merging nvme, adam8,
# hostopt, hopper, mem8b. In priority order, each under its own timeout:
# CUDA parity (attention incl. head sizes 16-80, the wgmma forwards, 8-bit
# AdamW segments), optimizer bit-exactness, offload (lr 1e-3, params=nvme),
# model (head size 16), ZeRO at one process; then speed: 8-bit AdamW
# variants, the host optimizer on 16 cores, llama3-8b at stage 3 / lean,
# attention forward wgmma vs fa2 vs torch.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_CACHE=/tmp/fc
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "Model name|Flags" | cut -c1-200; } > $OUT/gpu.txt
t() { local name=$1 secs=$2; shift 2; local s=$SECONDS; timeout $secs "$@" > $OUT/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"; grep -hE "test result|panicked|FAILED|worst|final loss|0 differ|llama-gqa" $OUT/$name.log | cut -c1-220 | head -14; }
t wgmma_tma 60 ./.dev/cuda_ops --exact attention_wgmma_tma --nocapture
t wgmma_sync 60 ./.dev/cuda_ops --exact attention_wgmma_sync --nocapture
t cuda_ops 120 ./.dev/cuda_ops --test-threads 1 --skip attention_wgmma
t cuda_optim 60 ./.dev/cuda_optim --nocapture
t cuda_offload 200 ./.dev/cuda_offload --nocapture --test-threads 1
t cuda_model 60 ./.dev/cuda_model --test-threads 1 --nocapture
t cuda_zero 60 ./.dev/cuda_zero --nocapture
BO="./.dev/ferrotron bench optim --set model.preset=llama-1b --set device=cuda --set optimizer.name=adamw8bit --warmup 3 --steps 20"
for v in prefetch plain prefetch3; do FERROTRON_ADAM8=$v timeout 60 $BO > $OUT/adam8_$v.json 2>&1; echo "adam8 $v: $(grep -o '"median_step_ms":[0-9.]*\|"fraction_of_copy":[0-9.]*' $OUT/adam8_$v.json | tr '\n' ' ')"; done
t host_speed 90 ./.dev/offload_host_speed --ignored --nocapture
grep -E "cpu:|SUMMARY" $OUT/host_speed.log | head -4
B8="--set device=cuda --set model.preset=llama3-8b --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit --warmup 2 --steps 4"
for v in "z3:--set dist.zero_stage=3" "lean:--set dist.zero_stage=3 --set train.logits_chunk=1024 --set train.checkpoint_keep_attention=false"; do
  n=${v%%:*}; timeout 120 ./.dev/ferrotron bench train $B8 ${v#*:} > $OUT/8b_$n.json 2> $OUT/8b_$n.err
  echo "8b $n rc=$?: $(grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|"estimate_bytes":[0-9]*' $OUT/8b_$n.json | tr '\n' ' ')"
done
t attn_bench 150 ./.dev/cuda_ops --ignored --nocapture --exact attention_bench
grep -E "D=|T=|TFLOP" $OUT/attn_bench.log | head -30
