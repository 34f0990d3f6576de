#!/usr/bin/env bash
# N CPU processes on this machine, joined by jax.distributed over 127.0.0.1 (gloo collectives):
# a multi-host run in miniature, for trying a config's multi-process path and for the tests.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOGDIR] -- python -m pdist.main ARGS...
#
# Appends --coordinator_address, --num_processes and --process_id to the command of each process,
# forces DEVICES_PER_PROCESS CPU devices in each, prefixes every output line with [i] (and copies
# it to LOGDIR/process_i.log when -l is given). If one process fails the others are stopped; the
# script exits with the first failure's status.
set -euo pipefail

processes=2 devices=2 port="" logdir=""
while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    l) logdir=$OPTARG ;;
    *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
  echo "launch/local.sh: give the command after --, e.g. -- python -m pdist.main --config=configs/digits.py --workdir=runs/x" >&2
  exit 2
fi
if [ -z "$port" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[ -n "$logdir" ] && mkdir -p "$logdir"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < processes; i++)); do
  (
    export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}"
    set -o pipefail
    "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$processes" --process_id="$i" 2>&1 |
      if [ -n "$logdir" ]; then tee "$logdir/process_$i.log"; else cat; fi | sed -u "s/^/[$i] /"
  ) &
  pids+=($!)
done

status=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    set +e; wait "$pid"; rc=$?; set -e
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      echo "launch/local.sh: a process exited with status $rc; stopping the others" >&2
      cleanup
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  [ ${#running[@]} -gt 0 ] && sleep 0.5
done
exit "$status"
