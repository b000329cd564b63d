# Session 4, call 3: logs of the two failing CUDA test files (call 2 lost
# them to the returned-file limit: everything goes into one tarball now),
# attention forward with the wgmma kernel as default vs torch SDPA (flash
# and cuDNN) in the same call, then llama3-8b 1x4096 (stage 3 in one
# process, lean settings) vs PyTorch + bitsandbytes, alternating.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_CACHE=/tmp/fc RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r3; mkdir -p $R
trap 'tar czf $OUT/call3.tgz -C $R .' EXIT
t() { local name=$1 secs=$2; shift 2; local s=$SECONDS; timeout $secs "$@" > $R/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"; grep -hE "test result|panicked|FAILED|worst|final loss|llama-gqa|vs plain|differ" $R/$name.log | cut -c1-300 | head -16; }
t cuda_offload 200 ./.dev/cuda_offload --nocapture --test-threads 1
t cuda_model 60 ./.dev/cuda_model --test-threads 1 --nocapture
t attn_bench 60 ./.dev/cuda_ops --ignored --nocapture --exact attention_bench
grep -E "^\| " $R/attn_bench.log | head -12
timeout 150 python3 bench/attn_torch.py > $R/attn_torch.log 2>&1; echo "attn_torch rc=$?"; grep -E "^\| " $R/attn_torch.log | head -20
OUT=$R/strong DEADLINE_S=330 REPEATS=2 bash bench/side_by_side_strong.sh llama3-8b-1x4096-ckpt-8bit > $R/strong_stdout.log 2>&1; echo "strong rc=$?"
cat $R/strong/strong.md 2>/dev/null | head -20 || tail -5 $R/strong_stdout.log
