# Session 3, call 3: the rewritten 8-bit AdamW kernel (parity + bandwidth) and
# the strong-baseline side by side for GPT-2 8x1024 and llama-1b 4x2048.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1
mkdir -p $OUT/tests
for t in cuda_ops cuda_optim; do timeout 100 ./.dev/$t --test-threads 1 --nocapture > $OUT/tests/$t.txt 2>&1; echo "$t rc=$?"; done
grep -h "test result\|panicked" $OUT/tests/*.txt | head; grep -h "adamw8bit.*differ\|codes .*differ" $OUT/tests/*.txt | head -5
for o in adamw8bit adamw; do timeout 60 ./.dev/ferrotron bench optim --set model.preset=llama-1b --set device=cuda --set optimizer.name=$o --warmup 3 --steps 10 | tee -a $OUT/optim.jsonl | grep -o '"median_step_ms":[0-9.]*\|"fraction_of_copy":[0-9.]*'; done
OUT=$OUT/strong DEADLINE_S=$((585 - SECONDS)) bash bench/side_by_side_strong.sh gpt2-8x1024 llama1b-4x2048 > $OUT/strong_stdout.txt 2>&1; echo strong rc=$?
cat $OUT/strong/strong.md; tail -3 $OUT/strong_stdout.txt
