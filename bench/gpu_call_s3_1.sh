export NCCL_NVLS_ENABLE=0
mkdir -p $OUT/tests
for t in cuda_ops cuda_optim cuda_model; do timeout 150 ./.dev/$t --test-threads 1 > $OUT/tests/$t.txt 2>&1; echo "$t rc=$?"; done
grep -h "test result\|FAILED\|panicked" $OUT/tests/*.txt | head -40
OUT=$OUT/strong DEADLINE_S=$((570 - SECONDS)) bash bench/side_by_side_strong.sh A > $OUT/strong_stdout.txt 2>&1; echo strong rc=$?
tail -30 $OUT/strong/strong.md 2>/dev/null || tail -30 $OUT/strong_stdout.txt
