# Session 6, call 1 (issue 15): the strong-baseline side by side of group A
# (GPT-2 124M 8x1024 and 32x1024, llama-1b 4x2048 and 8x2048) with the Hopper
# attention kernels as defaults, 2 repeats each (median), then the per-op
# profile of llama-1b's step at 4x2048 and at 1x32768 with checkpointing,
# then llama-1b 1x32768 with the lean settings (bf16 gradients, no whole bf16
# shadow, attention recomputed as PyTorch's per-block checkpointing does).
# Binaries carried as .devpack/pack.tar.xz. Output tarred into $OUT/call1.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r1; mkdir -p $R
trap 'tar czf $OUT/call1.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; } > $R/gpu.txt
OUT=$R/strong REPEATS=2 DEADLINE_S=440 timeout 450 bash bench/side_by_side_strong.sh A > $R/strong.txt 2>&1
echo "strong rc=$? at ${SECONDS}s"; cat $R/strong/strong.md 2>/dev/null || tail -20 $R/strong.txt
L1B="--set model.preset=llama-1b --set device=cuda"
timeout 45 ./.dev/ferrotron bench train $L1B --set train.batch_size=4 --set train.seq_len=2048 --warmup 2 --steps 3 --profile > $R/prof_4x2048.txt 2>&1
echo "prof 4x2048 rc=$? at ${SECONDS}s"
timeout 60 ./.dev/ferrotron bench train $L1B --set train.batch_size=1 --set train.seq_len=32768 --set train.checkpoint_layers=true --warmup 1 --steps 2 --profile > $R/prof_1x32768.txt 2>&1
echo "prof 1x32768 rc=$? at ${SECONDS}s"
LEAN="--set train.batch_size=1 --set train.seq_len=32768 --set train.checkpoint_layers=true --set train.grad_dtype=bf16 --set dist.zero_stage=3 --set train.checkpoint_keep_attention=false"
(( SECONDS < 540 )) && timeout $((590 - SECONDS)) ./.dev/ferrotron bench train $L1B $LEAN --warmup 1 --steps 3 > $R/lean_1x32768.txt 2>&1
echo "lean rc=$? at ${SECONDS}s"; grep '^{' $R/lean_1x32768.txt | tail -1 | cut -c1-600
