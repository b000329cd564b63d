# Session 4, call 4 (last): after merging hostmem (pooled host gradients,
# clipping norm on the device) and the params=nvme checkpoint diagnosis.
# In priority order under per-step timeouts, all output tarred:
# the CUDA offload and model tests; the offloaded llama3-8b step (8-bit
# AdamW, 1x4096, grad_clip 0) against call 1's 7.65 s; FSDP2 + CPUOffload vs
# ferrotron offload at llama-1b (AdamW); the 8B fine-tune with Llama 3's
# tokenizer on real text (few steps).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r4; mkdir -p $R
trap 'tar czf $OUT/call4.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; } > $R/gpu.txt
t() { local name=$1 secs=$2; shift 2; local s=$SECONDS; timeout $secs "$@" > $R/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"; grep -hE "test result|panicked|FAILED|worst|final loss|twice|vs params|relative norm error .*e-0[12]|differ" $R/$name.log | cut -c1-260 | head -16; }
t cuda_offload 150 ./.dev/cuda_offload --nocapture --test-threads 1
t cuda_model 45 ./.dev/cuda_model --test-threads 1 --nocapture
OUT=$R/off timeout 130 bash bench/offload_speed.sh 8b-adamw8bit > $R/off_8b.txt 2>&1; echo "8b-adamw8bit rc=$?"; grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|"offload_opt_ms":[0-9.]*\|"offload_wait_ms":[0-9.]*\|host peak RSS [0-9]* B' $R/off_8b.txt | head -12 | tr '\n' ' '; echo
OUT=$R/off timeout 90 bash bench/offload_speed.sh fsdp2-1b > $R/off_fsdp2.txt 2>&1; echo "fsdp2-1b rc=$?"; tail -c 600 $R/off_fsdp2.txt
OUT=$R/off timeout 60 bash bench/offload_speed.sh 1b-offload-adamw > $R/off_1b.txt 2>&1; echo "1b-offload-adamw rc=$?"; grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|host peak RSS [0-9]* B' $R/off_1b.txt | head -5 | tr '\n' ' '; echo
OUT=$R/ft timeout 230 bash bench/finetune_8b.sh 6 data gpu2048 generate > $R/ft.txt 2>&1; echo "finetune rc=$?"; tail -25 $R/ft/summary.md 2>/dev/null || tail -8 $R/ft.txt
