#!/usr/bin/env bash
# A Cloud TPU VM slice (v4/v5e/v5p/v6e pods): create or reuse it, install pdist on every worker,
# run the same command on all of them, stream their logs.
#
#   launch/tpu_pod.sh -n NAME -z ZONE -t ACCELERATOR [-v RUNTIME] [-p PROJECT] [-s] [-d] -- PDIST_FLAGS...
#   launch/tpu_pod.sh -n pd-v4 -z us-central2-b -t v4-32 -- --config=configs/imagenet64.py \
#       --workdir=/mnt/runs/imagenet64 --config.data.data_dir=/mnt/tensorflow_datasets
#
#   -v  TPU runtime version (default tpu-ubuntu2204-base)   -p  GCP project (default: gcloud's)
#   -s  spot capacity when creating                         -d  delete the slice after the run
#   -m  MOUNT: "BUCKET:DIR" mounts gs://BUCKET at DIR on every worker with gcsfuse (for the workdir
#       and data_dir, which every worker must see at the same path)
#
# Expects gcloud authenticated for the project, and this checkout (its committed HEAD) as the code to
# run: it is archived, copied to every worker and installed with `pip install -e . "jax[tpu]"`. The
# run passes --distributed=on: on a TPU VM slice JAX reads the workers and this worker's id from the
# metadata server. Each worker's output is prefixed with its worker number; the script exits with the
# run's status.
set -euo pipefail

name="" zone="" accelerator="" runtime="tpu-ubuntu2204-base" project="" spot="" delete="" mount=""
while getopts "n:z:t:v:p:m:sdh" opt; do
  case "$opt" in
    n) name=$OPTARG ;;
    z) zone=$OPTARG ;;
    t) accelerator=$OPTARG ;;
    v) runtime=$OPTARG ;;
    p) project=$OPTARG ;;
    m) mount=$OPTARG ;;
    s) spot="--spot" ;;
    d) delete=1 ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
if [ -z "$name" ] || [ -z "$zone" ] || [ -z "$accelerator" ] || [ $# -eq 0 ]; then
  echo "launch/tpu_pod.sh: give -n NAME -z ZONE -t ACCELERATOR and pdist.main's flags after --; -h for help" >&2
  exit 2
fi
command -v gcloud >/dev/null || { echo "launch/tpu_pod.sh: gcloud is not installed; see cloud.google.com/sdk" >&2; exit 2; }
gc=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")

if ! "${gc[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "Creating $accelerator slice $name in $zone"
  # shellcheck disable=SC2086
  "${gc[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator" --version "$runtime" $spot
fi

top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
archive=$(mktemp --suffix=.tar.gz)
git -C "$top" archive --format=tar.gz --prefix=pdist/ -o "$archive" HEAD
"${gc[@]}" scp "$archive" "$name:pdist.tar.gz" "${where[@]}" --worker=all
rm -f "$archive"

setup='set -e; rm -rf pdist && tar xzf pdist.tar.gz && cd pdist && python3 -m venv ~/pdist-venv &&
  ~/pdist-venv/bin/pip install -q --upgrade pip && ~/pdist-venv/bin/pip install -q -e . "jax[tpu]"'
if [ -n "$mount" ]; then
  bucket=${mount%%:*} dir=${mount#*:}
  setup+="; if ! mountpoint -q $dir; then
    (command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
      sudo gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg &&
      echo 'deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt gcsfuse-jammy main' |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list && sudo apt-get update -q && sudo apt-get install -yq gcsfuse)) &&
    sudo mkdir -p $dir && sudo chown \$USER $dir && gcsfuse --implicit-dirs $bucket $dir; fi"
fi
echo "Installing on every worker of $name"
"${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "$setup"

args=$(printf '%q ' "$@")
run="cd pdist && PYTHONUNBUFFERED=1 ~/pdist-venv/bin/python -m pdist.main --distributed=on $args 2>&1 |
  sed -u \"s/^/[worker \$(curl -s -H Metadata-Flavor:Google http://metadata/computeMetadata/v1/instance/attributes/agent-worker-number)] /\""
status=0
"${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command "set -o pipefail; $run" || status=$?
if [ -n "$delete" ]; then
  "${gc[@]}" delete "$name" "${where[@]}" --quiet
fi
exit "$status"
