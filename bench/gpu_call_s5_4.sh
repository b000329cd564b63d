# Session 5, call 4: binaries of main with gputier merged and the wgmma
# backward as default (commit in bench/results/gpu_2026-12-02d.md).
# Re-checks of the two tests fixed after call 3, the model tests with the new
# default backward, the three-tier CUDA test, then the largest model: one step
# of 121 layers at llama3-8b width (27.44B = 3.0x PyTorch AdamW's 9.12B) with
# offload.gpu_gb=60 + offload.host_gb=85 + files. All output in $OUT/call4.tgz.
export NCCL_NVLS_ENABLE=0 CUDA_HOME=/usr/local/cuda PYTHONUNBUFFERED=1 RUST_BACKTRACE=1 FERROTRON_BIN=./.dev/ferrotron
mkdir -p .dev && tar xJf .devpack/pack.tar.xz -C .dev
R=/tmp/r4; mkdir -p $R
trap 'tar czf $OUT/call4.tgz -C $R .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; free -g | head -2; df -h /tmp | tail -1; } > $R/gpu.txt; cat $R/gpu.txt
t() { local name=$1 secs=$2; shift 2
  local s=$SECONDS; timeout $secs "$@" > $R/$name.log 2>&1; local rc=$?; echo "$name rc=$rc in $((SECONDS - s)) s"
  grep -hE "^test |test result|panicked|apart|worst loss gap|three vs|worst step" $R/$name.log | cut -c1-220 | head -16; }
t ops_bf16 30 ./.dev/cuda_ops --exact bf16_gradient_buffers --nocapture
t resume 60 ./.dev/cuda_offload resumes_from_its_unit_by_unit --nocapture
t three 100 ./.dev/cuda_offload three_tiers --nocapture --test-threads 1
t cuda_model 60 ./.dev/cuda_model --test-threads 1
L=121
./.dev/ferrotron info --set model.preset=llama3-8b --set model.n_layers=$L --set device=cuda --set train.batch_size=1 \
  --set train.seq_len=2048 --set model.max_seq_len=2048 --set train.checkpoint_layers=true --set optimizer.name=adamw8bit \
  --set train.grad_clip=0 --set offload.optimizer=nvme --set offload.path=\"/tmp/ft_nvme\" --set offload.host_gb=85 \
  --set offload.gpu_gb=60 > $R/info_three_$L.txt 2>&1
grep -E "^  total  |^  weights|host \(|disk \(|placement" $R/info_three_$L.txt | cut -c1-260
LEFT=$((585 - SECONDS))
OUT=$R timeout $LEFT python3 bench/offload_max_params.py --engines mixed --layers mixed=$L --host-gb 85 --gpu-gb 60 \
  --optimizer adamw8bit --nvme-path /tmp/ft_nvme --timeout $((LEFT - 10)) --seconds $((LEFT - 5)) > $R/max.txt 2>&1
echo "max rc=$? after ${SECONDS}s"; cut -c1-900 $R/offload_max_params.jsonl 2>/dev/null; tail -5 $R/max.txt
