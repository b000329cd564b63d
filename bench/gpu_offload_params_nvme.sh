#!/usr/bin/env bash
# offload.params = nvme on one nvidia-h200 (issue 14), after
# bench/stage_binaries.sh (carry .dev): (1) the CUDA offload tests, with the
# params = nvme cases; (2) one llama-1b-width step per setting with the
# optimizer on the nvme tier, weights resident vs streamed from the files
# (peak GPU bytes, step time, disk bytes read and read wait per step);
# (3) the largest llama3-8b-width model that trains with params = nvme.
# About 8 minutes of device time.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 FERROTRON_BIN=./.dev/ferrotron
cd "$(dirname "$0")/.."
{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader; nproc; free -g | head -2; df -h /tmp | tail -1; } > $OUT/gpu.txt
timeout 240 ./.dev/cuda_offload --nocapture --test-threads 1 > $OUT/cuda_offload.log 2>&1
echo "cuda_offload exit $?" >> $OUT/cuda_offload.log
grep -E "^test |test result|panicked|peak|reads|rel diff" $OUT/cuda_offload.log | cut -c1-250
for params in none nvme; do
  timeout 150 ./.dev/ferrotron bench train --set model.preset=llama3-8b --set model.n_layers=4 --set device=cuda \
    --set train.batch_size=1 --set train.seq_len=2048 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit \
    --set offload.optimizer=nvme --set offload.params=$params --set offload.path=\"/tmp/ft_nvme\" --warmup 1 --steps 3 \
    > $OUT/step_params_$params.json 2> $OUT/step_params_$params.err
  echo "params=$params exit $?"; head -c 1500 $OUT/step_params_$params.json; echo
done
python3 bench/offload_max_params.py --engines nvme-params --optimizer adamw8bit --layers 8,16,24,32 --nvme-path /tmp/ft_nvme --timeout 150 --seconds 200
grep -h summary $OUT/offload_max_params.jsonl
