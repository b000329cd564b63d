# Session 5, call 1 (main at the commit recorded in bench/results): three
# measurements that need no new code, under per-step timeouts, all output
# tarred into $OUT/call1.tgz:
# 1. the 8B-shaped model on real text with Llama 3's tokenizer for 300 steps
#    (lr 1.5e-4, 50 warm-up steps: 6 steps at 3e-4 / 5 warm-up diverged);
# 2. PyTorch AdamW's largest Llama (8B width) that trains one step at 2048
#    (issue 14's baseline for "3x the parameters");
# 3. DeepSpeed ZeRO-2 + offload_optimizer=cpu at llama-1b 1x4096 (install
#    from the carried wheels, CPU Adam JIT-built), and ferrotron's
#    optimizer offload at the same model and batch, side by side.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r1; mkdir -p $R
trap 'tar czf $OUT/call1.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; df -h . | tail -1; nproc; } > $R/gpu.txt
cat $R/gpu.txt
LR=1.5e-4 WARMUP=50 BUDGET_S=290 OUT=$R/ft timeout 300 bash bench/finetune_8b.sh 300 data gpu2048 > $R/ft.txt 2>&1; echo "finetune rc=$?"
cat $R/ft/phases.txt 2>/dev/null; python3 bench/finetune_report.py $R/ft > $R/ft/summary.md 2>&1; tail -20 $R/ft/summary.md
rm -rf .ft8b/runs
OUT=$R/max FERROTRON_BIN=./.dev/ferrotron timeout 140 python3 bench/offload_max_params.py --engines pytorch --layers 35,36,37,38 --timeout 60 --seconds 135 > $R/max.txt 2>&1; echo "max rc=$?"; tail -8 $R/max.txt; cat $R/max/*.jsonl 2>/dev/null | cut -c1-300
export DS_WHEELS=.dev/wheels
OUT=$R/off timeout 110 bash bench/offload_speed.sh deepspeed-install > $R/ds_install.txt 2>&1; echo "ds-install rc=$?"; tail -c 800 $R/ds_install.txt
OUT=$R/off timeout 80 bash bench/offload_speed.sh deepspeed-1b > $R/ds_1b.txt 2>&1; echo "ds-1b rc=$?"; tail -c 1200 $R/ds_1b.txt
OUT=$R/off timeout 50 bash bench/offload_speed.sh 1b-offload-adamw > $R/ft_1b.txt 2>&1; echo "1b-offload-adamw rc=$?"; grep -o '"median_step_ms":[0-9.]*\|"tokens_per_s":[0-9.]*\|"peak_mem_bytes":[0-9]*\|host peak RSS [0-9]* B' $R/ft_1b.txt | head -5 | tr '\n' ' '; echo
