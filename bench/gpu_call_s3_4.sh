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
# Checkpoint cost, short form (the device budget does not allow 120 steps):
# llama-1b 4x2048, 40 steps, one async save after step 30 (and the run's
# final save). Overhead at one save per 100 steps = (time blocked + extra
# time of steps 31..40 over the mean of steps 11..30) / (100 x mean step).
mkdir -p $OUT/ckpt
timeout 100 ./.dev/ferrotron train --set model.preset=llama-1b --set device=cuda --set data.path=builtin --set train.batch_size=4 --set train.seq_len=2048 \
  --set train.recompute=true --set train.steps=40 --set train.ckpt_every=30 --set train.eval_every=0 --set train.eval_batches=1 --set train.samples=0 \
  --set train.schedule=constant --set train.warmup_steps=5 --set train.keep_ckpts=1 --set run.progress=false --set run.dir=\"/tmp/ck\" --set run.name=a > $OUT/ckpt/async.log 2>&1
echo "ckpt run rc=$?"; cp /tmp/ck/a/metrics.jsonl $OUT/ckpt/async.metrics.jsonl
grep -h '"ckpt"' $OUT/ckpt/async.metrics.jsonl | head -3; grep -i "page-locked" $OUT/ckpt/async.log | head -3
python3 - $OUT/ckpt/async.metrics.jsonl <<'PY'
import json,sys
L=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
st={l["step"]:l["step_ms"] for l in L if l["kind"]=="train"}; ck={l["step"]:l for l in L if l["kind"]=="ckpt"}
base=sum(st[s] for s in range(11,31))/20; after=[st[s] for s in range(31,41) if s in st]
c=ck.get(30,{}); blk=c.get("ckpt_block_ms",0); extra=sum(after)-base*len(after)
print(f"steps 11..30 mean {base:.1f} ms; save at 30: blocked {blk:.0f} ms, write {c.get('ckpt_write_ms')} ms, bytes {c.get('ckpt_bytes')}; steps 31..40 extra {extra:.0f} ms; overhead at 1 save / 100 steps {100*(blk+extra)/(100*base):+.2f}%")
PY
OUT=$OUT/offload timeout 60 bash bench/offload_speed.sh 1b-offload > $OUT/offload_stdout.txt 2>&1; echo "offload rc=$?"; tail -c 1500 $OUT/offload_stdout.txt
t cuda_model 40 ./.dev/cuda_model --test-threads 1
./.dev/ferrotron bench train --set model.preset=gpt2-124m --set device=cuda --set train.batch_size=8 --set train.seq_len=1024 --warmup 3 --steps 10 > $OUT/gpt2.json 2>$OUT/gpt2.err; grep -o '"tokens_per_s":[0-9.]*' $OUT/gpt2.json
