#!/usr/bin/env bash
# Data of the GPU algoperf workloads, made from what the machine has (no internet):
#   code   -> data/algoperf/code : the Python standard library + the `transformers`
#             package sources (as bench/convergence.sh), GPT-2 BPE, 1% of files held out
#   prose  -> data/algoperf/prose: English prose from the same installation
#             (bench/algoperf_prose.py: docstrings, text files, package READMEs)
# usage: bash bench/algoperf_data.sh code|prose|all     (binary: $FERROTRON or .dev/ferrotron)
# A folder that already has meta.json is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${FERROTRON:-./.dev/ferrotron}
[ -x "$B" ] || B=./target/release/ferrotron
mkdir -p data/algoperf
code() {
  [ -f data/algoperf/code/meta.json ] && return 0
  local stdlib hf inputs
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  inputs=(--input "$stdlib")
  hf=$(python3 -c 'import transformers, os; print(os.path.dirname(transformers.__file__))' 2>/dev/null) && inputs+=(--input "$hf")
  "$B" prepare "${inputs[@]}" --out data/algoperf/code --val-fraction 0.01 2>&1 | tail -3
}
prose() {
  [ -f data/algoperf/prose/meta.json ] && return 0
  python3 bench/algoperf_prose.py data/algoperf/prose.jsonl
  "$B" prepare --input data/algoperf/prose.jsonl --out data/algoperf/prose --val-fraction 0.01 2>&1 | tail -3
}
case "${1:-all}" in
  code) code ;;
  prose) prose ;;
  all) code & prose & wait ;;
  *) echo "usage: $0 code|prose|all" >&2; exit 2 ;;
esac
