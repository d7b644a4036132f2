#!/usr/bin/env bash
# Run one command as N JAX processes on this machine, each with M simulated CPU devices.
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOG_DIR] \
#       -- COMMAND [ARGS...]
#
#   -n  number of processes (default 2)
#   -d  simulated CPU devices per process, via XLA_FLAGS=--xla_force_host_platform_device_count
#       (default 4)
#   -p  coordinator port on 127.0.0.1 (default: a free port picked by the OS)
#   -l  also write each process's output to LOG_DIR/process_<i>.log
#
# Every process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N and its own
# JAX_PROCESS_ID, which musc_jax.distributed.maybe_initialize (called by every musc_jax CLI)
# passes to jax.distributed.initialize. JAX_PLATFORMS defaults to cpu (export it to change).
# Output lines are prefixed with [process i]. The script waits for all processes; when one fails
# it stops the others and exits with the failed process's status.
#
# Example: a 2 x 4 = 8-device training run on a laptop
#   launch/local_multiprocess.sh -n 2 -d 4 -- python -m musc_jax.train --config configs/dpo.py \
#       --config.model.path=/path/to/model --config.data.train=/path/to/pairs --config.mesh.fsdp=-1
# Pair building (each process builds its own shards; process 0 writes stats.json) and eval:
#   launch/local_multiprocess.sh -n 2 -d 4 -- python -m musc_jax.pairs \
#       --config configs/pairs_musc.py --config.pairs.out_dir=runs/pairs_2proc
#   launch/local_multiprocess.sh -n 2 -d 4 -- python -m musc_jax.eval --config configs/microworld.py \
#       --config.model.path=musc_jax/microworld/assets/base_model \
#       --config.eval.data=musc_jax/microworld/assets/eval.jsonl --config.eval.out=runs/eval_2proc.json
set -euo pipefail

procs=2
devices=4
port=""
log_dir=""
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) procs="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  echo "local_multiprocess.sh: no command given" >&2
  usage
fi
if ! [[ "$procs" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: -n and -d must be positive integers (got -n $procs -d $devices)" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ -n "$log_dir" ]] && mkdir -p "$log_dir"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < procs; i++)); do
  if [[ -n "$log_dir" ]]; then
    sink=(tee "$log_dir/process_$i.log")
  else
    sink=(cat)
  fi
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$procs" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices" \
    "$@" > >("${sink[@]}" | sed -u "s/^/[process $i] /") 2>&1 &
  pids+=("$!")
done

# Poll instead of `wait -n`, which older bash (macOS) lacks.
status=0
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  next=()
  for pid in "${live[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      next+=("$pid")
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local_multiprocess.sh: a process exited with status $rc; stopping the others" >&2
      cleanup
    fi
  done
  live=(${next[@]+"${next[@]}"})
  ((${#live[@]} > 0)) && sleep 0.2
done
wait  # let the output filters drain
exit "$status"
