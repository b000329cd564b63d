# Session 4, call 1 (commit of this script): the CUDA offload defect
# diagnosed (offloaded run twice = bit-identical? fp32 device weights
# track the plain run?), llama3-8b 8-bit memory and speed plain vs ZeRO
# stage 3 at one process (no bf16 shadow), and the offloaded 8B step after
# last session's host-side work. Each step under its own timeout.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; free -g | head -2; } > $OUT/gpu.txt
t() { local name=$1 secs=$2; shift 2; local s=$SECONDS; timeout $secs "$@" > $OUT/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"; grep -hE "test result|panicked|FAILED|worst|final loss" $OUT/$name.log | cut -c1-250 | head -12; }
t cuda_offload 170 ./.dev/cuda_offload --nocapture --test-threads 1
B8="--set model.preset=llama3-8b --set device=cuda --set train.batch_size=1 --set train.seq_len=4096 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit"
for z in 0 3; do
  s=$SECONDS; timeout 150 ./.dev/ferrotron bench train $B8 --set dist.zero_stage=$z --warmup 2 --steps 4 > $OUT/8b_zero$z.json 2> $OUT/8b_zero$z.err
  echo "8b zero$z rc=$? in $((SECONDS - s)) s"; python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print({k:r.get(k) for k in ['median_step_ms','tokens_per_s','peak_mem_bytes']})" $OUT/8b_zero$z.json 2>&1 | tail -1
done
OUT=$OUT/offload timeout 200 bash bench/offload_speed.sh 8b-adamw8bit > $OUT/offload_stdout.txt 2>&1; echo "offload 8b rc=$?"; tail -c 1200 $OUT/offload_stdout.txt
