#!/usr/bin/env bash
# Build one MuSC microworld pair set twice, as 1 process x 8 simulated CPU devices and as
# 2 processes x 4 devices (launch/local_multiprocess.sh), and check the two are equal byte for byte.
#
#   scripts/multiprocess_pairs_check.sh [OUT_DIR] [--config.KEY=VALUE ...]
#
# OUT_DIR (default runs/multiprocess_pairs) gets one/ and two/ (the two pairs runs), logs/ (each
# process's output) and times.txt (wall seconds of each run). Every file under one/pairs and
# two/pairs (Arrow data, dataset_info.json, state.json, pairs.jsonl, shard_stats.json) must be
# identical; stats.json and config.json may differ only where they name their own out_dir.
# Then, unless EVAL_ITEMS=0, the same for `musc_jax.eval`: the first EVAL_ITEMS (default 40)
# held-out microworld items answered with sampling (temperature 0.8, batches of 8: the per-batch
# seeds matter, not only greedy argmaxes) on 1 x 8 and 2 x 4; the two eval JSONs (every response
# and verdict) must be identical. Exit status 0 when everything is equal, 1 otherwise. PYTHON
# (default .venv/bin/python, else python) runs the jobs; extra arguments are passed to both
# pair builds (e.g. --config.data.num_seeds=64).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/multiprocess_pairs}"
shift || true
py="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# 32 seeds in shards of 8: 4 shards, two per process; responses up to 128 new tokens (sampled,
# temperature 0.5: the per-shard seeds matter, not only greedy argmaxes); KL token weights.
common=(--config configs/pairs_musc.py --config.seed=0 --config.data.num_seeds=32
        --config.pairs.shard_size=8 --config.pairs.progress=False "$@")
rm -rf "$out/one" "$out/two" "$out/logs" "$out/eval"
mkdir -p "$out/logs"

t0=$(date +%s)
XLA_FLAGS="--xla_force_host_platform_device_count=8" \
  "$py" -m musc_jax.pairs "${common[@]}" --config.pairs.out_dir="$out/one" > "$out/logs/one.log" 2>&1 \
  || { tail -n 30 "$out/logs/one.log"; exit 1; }
t1=$(date +%s)
launch/local_multiprocess.sh -n 2 -d 4 -l "$out/logs" -- \
  "$py" -m musc_jax.pairs "${common[@]}" --config.pairs.out_dir="$out/two" > /dev/null \
  || { tail -n 30 "$out"/logs/process_*.log; exit 1; }
t2=$(date +%s)
printf 'one_process_8_devices_s=%d\ntwo_processes_4_devices_s=%d\n' $((t1 - t0)) $((t2 - t1)) \
  | tee "$out/times.txt"

status=0
"$py" - "$out" <<'EOF' || status=1
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
one, two = out / "one", out / "two"
files = sorted(p.relative_to(one) for p in (one / "pairs").rglob("*") if p.is_file())
other = sorted(p.relative_to(two) for p in (two / "pairs").rglob("*") if p.is_file())
differ = [str(f) for f in files if f not in other or (one / f).read_bytes() != (two / f).read_bytes()]
differ += [f"{f} (only in two)" for f in other if f not in files]

def own(d, name):   # the file with its own out_dir replaced by a placeholder
    return (d / name).read_text().replace(str(d.resolve()), "<out_dir>").replace(str(d), "<out_dir>")

differ += [name for name in ("stats.json", "config.json") if own(one, name) != own(two, name)]
stats = json.loads((one / "stats.json").read_text())
print(f"files compared: {len(files)} under pairs/ + stats.json + config.json; "
      f"pairs: {stats['pairs']}; shards: {json.dumps(stats['shards'])}")
print("pairs equal: " + ("yes" if not differ else "NO, differ: " + ", ".join(differ)))
sys.exit(1 if differ else 0)
EOF
items="${EVAL_ITEMS:-40}"
[[ "$items" == 0 ]] && exit "$status"

mkdir -p "$out/eval"
head -n "$items" musc_jax/microworld/assets/eval.jsonl > "$out/eval/items.jsonl"
eval_args=(--config configs/microworld.py --config.model.path=musc_jax/microworld/assets/base_model
           --config.eval.data="$out/eval/items.jsonl" --config.eval.temperature=0.8
           --config.eval.batch_size=8 --config.eval.max_new_tokens=160 --config.eval.seed=5)
t0=$(date +%s)
XLA_FLAGS="--xla_force_host_platform_device_count=8" \
  "$py" -m musc_jax.eval "${eval_args[@]}" --config.eval.out="$out/eval/one.json" \
  > "$out/logs/eval_one.log" 2>&1 || { tail -n 30 "$out/logs/eval_one.log"; exit 1; }
t1=$(date +%s)
launch/local_multiprocess.sh -n 2 -d 4 -l "$out/logs/eval_two" -- \
  "$py" -m musc_jax.eval "${eval_args[@]}" --config.eval.out="$out/eval/two.json" > /dev/null \
  || { tail -n 30 "$out"/logs/eval_two/process_*.log; exit 1; }
t2=$(date +%s)
printf 'eval_one_process_8_devices_s=%d\neval_two_processes_4_devices_s=%d\n' $((t1 - t0)) $((t2 - t1)) \
  | tee -a "$out/times.txt"
eval_status=0
"$py" - "$out/eval" <<'EOF' || eval_status=1
import json, sys
from pathlib import Path

d = Path(sys.argv[1])
one, two = (json.loads((d / f).read_text()) for f in ("one.json", "two.json"))
answered = sum(bool(it["response"].strip()) for it in one["items"])
print(f"eval items: {len(one['items'])} ({answered} non-empty responses); prompt-level strict "
      f"{one['prompt_level_strict']:.3f}")
print("eval equal: " + ("yes" if one == two else "NO"))
sys.exit(0 if one == two else 1)
EOF
exit $((status | eval_status))
