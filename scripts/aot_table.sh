#!/usr/bin/env bash
# TPU ahead-of-time compile figures of the Llama-3-8B MuSC config on v5p-64 (docs/aot.md).
# Writes docs/results/aot/<name>.txt: the planner's and the compiler's report (libtpu's
# start-up warnings dropped). Needs libtpu (pip install -e ".[tpu-aot]"); no TPU.
# Usage: scripts/aot_table.sh [name ...]   (default: all; names: main memory einsum online unscanned)
# "memory" is the main config without the loop-free cost compiles: the real program's memory
# (and the generation loop's) in minutes, where "main" needs ~24 GB free and much longer.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=docs/results/aot
CONFIG=configs/llama3_8b_musc.py:v5p64
mkdir -p "$OUT"
declare -A ARGS=(
  [main]=""                                                    # splash attention, scanned layers
  [memory]="--aot_costs=false"
  [einsum]="--config.model.attention=einsum --aot_generate=false"
  [online]="--config.reference.mode=online --aot_generate=false"
  [unscanned]="--config.model.scan_layers=false --aot_generate=false"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(main memory einsum online unscanned)
for name in "${names[@]}"; do
  cmd="$PY -m musc_jax.plan --config $CONFIG --config.plan.aot=tpu ${ARGS[$name]}"
  echo "== $name: $cmd"
  { echo "\$ python ${cmd#"$PY" }"; echo "# $(date -u +%FT%TZ), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    $cmd 2>&1 | grep -v -E '^(W|I|E)[0-9]{4}|^WARNING|^===|Source Location|libtpu_init|^Failed to find host'
  } > "$OUT/llama3_8b_musc_v5p64_$name.txt"
  tail -1 "$OUT/llama3_8b_musc_v5p64_$name.txt"
done
