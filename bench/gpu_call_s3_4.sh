# Session 3, call 4 (after merging ops15, zero17, ckptfast, offload14), in
# priority order, each step under its own timeout (the device budget left is
# ~5 minutes; what has been written under $OUT comes back even if cut):
# CUDA parity of the refactored ops, ZeRO/NCCL at world 1 (async collectives,
# bf16 gathers), offload on CUDA, async checkpoint overhead on llama-1b,
# an offloaded llama-1b step (the 8B one does not fit the budget), then the model tests and a GPT-2 speed check.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } > $OUT/gpu.txt
t() { local name=$1 secs=$2; shift 2; local s=$SECONDS; timeout $secs "$@" > $OUT/$name.log 2>&1; echo "$name rc=$? in $((SECONDS - s)) s"; grep -hE "test result|panicked|FAILED" $OUT/$name.log | head -5; }
t cuda_ops 45 ./.dev/cuda_ops --test-threads 1
t cuda_optim 40 ./.dev/cuda_optim
t cuda_zero 60 ./.dev/cuda_zero --nocapture
grep -E "zero3|nccl|bit for bit" $OUT/cuda_zero.log | cut -c1-250 | head -12
t dist_nccl 40 ./.dev/dist_nccl --nocapture
t cuda_offload 75 ./.dev/cuda_offload --nocapture --test-threads 1
grep -iE "peak|within|loss" $OUT/cuda_offload.log | cut -c1-250 | head -10
OUT=$OUT/ckpt MODES="async" timeout 130 bash bench/ckpt_overhead.sh > $OUT/ckpt_stdout.txt 2>&1; echo "ckpt rc=$?"
grep -h '"ckpt"' $OUT/ckpt/async.metrics.jsonl | head -3; grep -i "page-locked" $OUT/ckpt/async.log | head -3
python3 - $OUT/ckpt/async.metrics.jsonl <<'PY'
import json,sys
L=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
st={l["step"]:l["step_ms"] for l in L if l["kind"]=="train"}; ck={l["step"]:l for l in L if l["kind"]=="ckpt"}
base=[st[s] for s in range(21,100) if s in st]; win=[st[s] for s in range(21,121) if s in st]
b=sum(base)/len(base); blk=ck.get(100,{}).get("ckpt_block_ms",0)
print(f"async: steps 21..99 mean {b:.1f} ms; window 21..120 {sum(win):.0f} ms + blocked {blk:.0f} ms vs 100 x {b:.1f}: overhead {100*((sum(win)+blk)/(100*b)-1):+.2f}%; write {ck.get(100,{}).get('ckpt_write_ms')} ms")
PY
OUT=$OUT/offload timeout 60 bash bench/offload_speed.sh 1b-offload > $OUT/offload_stdout.txt 2>&1; echo "offload rc=$?"; tail -c 1500 $OUT/offload_stdout.txt
t cuda_model 40 ./.dev/cuda_model --test-threads 1
./.dev/ferrotron bench train --set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024 --warmup 3 --steps 10 > $OUT/gpt2.json 2>$OUT/gpt2.err; grep -o '"tokens_per_s":[0-9.]*' $OUT/gpt2.json
