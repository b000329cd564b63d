# Session 5, call 3: binaries of main (commit in bench/results/gpu_2026-12-02d.md),
# hopperbwd merged. The Hopper backward's parity with the fixed per-row
# floor (both variants), its benchmark, the bf16-gradient ops test with its
# ulp bound, the unit-by-unit checkpoint resume on CUDA; then, with the
# backward that passed (TMA first), the strong-baseline side by side:
# llama3-8b 1x4096 8-bit with bf16 gradients, then llama-1b 1x32768 with
# checkpointing if the call has time. All output tarred into $OUT/call3.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r3; mkdir -p $R
trap 'tar czf $OUT/call3.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; } > $R/gpu.txt
t() { local name=$1 secs=$2; shift 2
  local s=$SECONDS; timeout $secs "$@" > $R/$name.log 2>&1; local rc=$?; echo "$name rc=$rc in $((SECONDS - s)) s"
  grep -hE "^test |test result|panicked|outside|ulps|worst loss gap" $R/$name.log | cut -c1-220 | head -14; return $rc; }
ATTN_BWD_DEBUG=1 t bwd_tma 60 ./.dev/cuda_ops --exact attention_wgmma_bwd --nocapture; TMA=$?
ATTN_BWD_DEBUG=1 t bwd_sync 60 ./.dev/cuda_ops --exact attention_wgmma_bwd_sync --nocapture; SYNC=$?
SKIP=""; [ $TMA = 0 ] || SKIP=wgmma-bwd; [ $SYNC = 0 ] || SKIP="$SKIP,wgmma-sync-bwd"
ATTN_BENCH_SKIP=$SKIP t attn_bench 60 ./.dev/cuda_ops --ignored --nocapture --exact attention_bench
grep -h "^|" $R/attn_bench.log | head -12
t ops_bf16 30 ./.dev/cuda_ops --exact bf16_gradient_buffers --nocapture
t resume 60 ./.dev/cuda_offload resumes_from_its_unit_by_unit --nocapture
if [ $TMA = 0 ]; then export FERROTRON_ATTN_BWD=wgmma; elif [ $SYNC = 0 ]; then export FERROTRON_ATTN_BWD=wgmma-sync; else export FERROTRON_ATTN_BWD=fa2; fi
echo "side by side with FERROTRON_ATTN_BWD=$FERROTRON_ATTN_BWD" | tee $R/attn_bwd_choice.txt
[ -d .whl/site ] || echo "no .whl/site: the 8-bit PyTorch side will be skipped"
OUT=$R/strong REPEATS=1 DEADLINE_S=$((585 - SECONDS)) timeout $((590 - SECONDS)) bash bench/side_by_side_strong.sh llama3-8b-1x4096-ckpt-8bit-bf16grads llama1b-1x32768-ckpt > $R/strong.txt 2>&1
echo "strong rc=$?"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
