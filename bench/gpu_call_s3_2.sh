# Session 3, call 2: the attention parity fix, a smoke run of the strong
# baseline (eager and compiled, tiny shapes), checkpoint overhead (issue 17).
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p $OUT/tests
timeout 60 ./.dev/cuda_ops --test-threads 1 attention > $OUT/tests/cuda_ops_attention.txt 2>&1; echo "cuda_ops attention rc=$?"
grep -h "test result\|FAILED\|panicked" $OUT/tests/*.txt | head
for p in "gpt2-124m --batch 4 --seq 256" "llama-1b --batch 1 --seq 256"; do
  timeout 150 python3 bench/strong_torch.py --preset $p --warmup 2 --steps 3 >> $OUT/strong_smoke.txt 2>&1; echo "strong $p rc=$?"
done
tail -3 $OUT/strong_smoke.txt
OUT=$OUT/ckpt timeout $((590 - SECONDS)) bash bench/ckpt_overhead.sh > $OUT/ckpt_stdout.txt 2>&1; echo "ckpt rc=$?"
tail -15 $OUT/ckpt_stdout.txt
