#!/usr/bin/env bash
# Run one command on every worker (host) of a Cloud TPU VM slice, e.g. a v5p-64 (8 hosts).
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] [--repo DIR] [--venv DIR]
#       [--port PORT] [--env KEY=VALUE ...] [--install] [--dry_run] -- COMMAND [ARGS...]
#
#   --tpu      TPU VM name (as in `gcloud compute tpus tpu-vm list`)              [required]
#   --zone     its zone, e.g. us-east5-a                                           [required]
#   --project  Google Cloud project (default: gcloud's configured project)
#   --repo     checkout of this repository on every worker (default: musc_jax; a relative path
#              is relative to the worker's home directory); the command runs there. Copy it
#              first, e.g. with
#              gcloud compute tpus tpu-vm scp --recurse --worker=all . NAME:~/musc_jax --zone ZONE
#   --venv     virtual environment to activate on the workers (default: REPO/.venv, if present)
#   --port     coordinator port on worker 0 (default 8476)
#   --env      extra KEY=VALUE exported on every worker (repeatable), e.g.
#              --env MUSC_MODEL_PATH=/mnt/models/llama3-8b --env MUSC_TRAIN_DATA=gs://...
#   --install  first `pip install -e ".[tpu]"` in the repo on every worker (jax[tpu] of our jax
#              version, which brings libtpu; the plain install is the CPU build)
#   --dry_run  print the gcloud command instead of running it
#
# The script asks gcloud for the slice's workers (their internal IPs), then starts COMMAND on
# all of them at once with `gcloud compute tpus tpu-vm ssh --worker=all`. Each worker exports
#   JAX_COORDINATOR_ADDRESS=<worker 0 IP>:PORT  JAX_NUM_PROCESSES=<workers>
#   JAX_PROCESS_ID=<its worker number, from the TPU VM metadata server>
# which musc_jax.distributed.maybe_initialize (called by every musc_jax CLI) passes to
# jax.distributed.initialize; JAX then sees every chip of the slice (v5p-64: 32 devices).
# The command's output from all workers streams back here; the exit status is gcloud's (non-zero
# if the command failed on any worker).
#
# Example: MuSC on Llama-3-8B on a v5p-64
#   launch/tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a --env MUSC_MODEL_PATH=/mnt/llama3-8b \
#       --env MUSC_TRAIN_DATA=/mnt/pairs/musc -- python -m musc_jax.train \
#       --config configs/llama3_8b_musc.py
# Pair building and evaluation run the same way (every worker takes its share of the seeds or
# items; out_dir must be on storage all workers share, docs/scale_out.md section 4):
#   launch/tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a -- python -m musc_jax.pairs \
#       --config configs/pairs_musc.py --config.model.path=/mnt/llama3-8b \
#       --config.data.source=jsonl --config.data.path=/mnt/seeds.jsonl --config.musc.decomposer=rule \
#       --config.pairs.out_dir=/mnt/pairs/musc
#   launch/tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a -- python -m musc_jax.eval \
#       --config configs/llama3_8b_musc.py --config.model.path=/mnt/llama3-8b \
#       --config.eval.data=/mnt/ifeval.jsonl --config.eval.out=/mnt/eval/base.json
set -euo pipefail

tpu="" zone="" project="" repo="musc_jax" venv="" port=8476 dry_run=0 install=0
extra_env=()
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --env) extra_env+=("$2"); shift 2 ;;
    --install) install=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown argument $1 (the command goes after --)" >&2; usage ;;
  esac
done
if [[ -z "$tpu" || -z "$zone" || $# -eq 0 ]]; then
  echo "tpu_pod.sh: --tpu, --zone and a command after -- are required" >&2
  usage
fi
for kv in ${extra_env[@]+"${extra_env[@]}"}; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "tpu_pod.sh: --env wants KEY=VALUE, got $kv" >&2; exit 2; }
done

gcloud_args=(--zone "$zone")
[[ -n "$project" ]] && gcloud_args+=(--project "$project")

# Workers' internal IPs, in worker order; worker 0 hosts the coordinator.
ips="$(gcloud compute tpus tpu-vm describe "$tpu" "${gcloud_args[@]}" \
        --format='value(networkEndpoints[].ipAddress)')"
read -r -a workers <<< "${ips//[;,]/ }"
if [[ ${#workers[@]} -eq 0 ]]; then
  echo "tpu_pod.sh: gcloud found no workers for TPU $tpu in $zone" >&2
  exit 1
fi

# The script each worker runs. Values are quoted with printf %q; the worker number comes from
# the metadata server of the TPU VM it runs on.
q() { printf '%q' "$1"; }
remote="set -e; cd $(q "$repo")"
if [[ -n "$venv" ]]; then
  remote+="; source $(q "$venv")/bin/activate"
else
  remote+="; if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi"
fi
[[ "$install" == 1 ]] && remote+="; python -m pip install -q -e '.[tpu]'"
remote+="; export JAX_COORDINATOR_ADDRESS=$(q "${workers[0]}:$port") JAX_NUM_PROCESSES=${#workers[@]}"
remote+="; export JAX_PROCESS_ID=\$(curl -sf -H 'Metadata-Flavor: Google'"
remote+=" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)"
remote+="; [ -n \"\$JAX_PROCESS_ID\" ] || { echo 'tpu_pod.sh: no agent-worker-number in the metadata' >&2; exit 1; }"
remote+="; export TOKENIZERS_PARALLELISM=false"
for kv in ${extra_env[@]+"${extra_env[@]}"}; do
  remote+="; export ${kv%%=*}=$(q "${kv#*=}")"
done
cmd=""
for arg in "$@"; do cmd+=" $(q "$arg")"; done
remote+=";$cmd"

ssh_cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_args[@]}" --worker=all --command "$remote")
echo "tpu_pod.sh: ${#workers[@]} workers, coordinator ${workers[0]}:$port" >&2
if ((dry_run)); then
  printf '%q ' "${ssh_cmd[@]}"
  echo
  exit 0
fi
exec "${ssh_cmd[@]}"
