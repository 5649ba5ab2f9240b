#!/usr/bin/env bash
# Multi-host training in miniature: N processes on this machine, each with
# D emulated CPU devices, talking over gloo. Same code path as a pod.
#   launch/local_cpu.sh WORKDIR [--config=configs/nih.py:smoke --config.x=...]
# Env: NUM_PROCESSES (2), DEVICES_PER_PROCESS (2), PORT (random).
set -euo pipefail
workdir=${1:?usage: launch/local_cpu.sh WORKDIR [main.py flags]}
shift
num_processes=${NUM_PROCESSES:-2}
port=${PORT:-$((20000 + RANDOM % 20000))}
mkdir -p "$workdir"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}"
pids=()
for ((i = 0; i < num_processes; i++)); do
  python -m mlvicx_jax.main --workdir="$workdir" --coordinator_address="localhost:$port" \
    --num_processes="$num_processes" --process_id="$i" "$@" >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if [ "$status" -ne 0 ]; then tail -n 30 "$workdir"/process_*.log >&2; fi
exit "$status"
