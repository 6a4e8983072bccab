#!/usr/bin/env bash
# Run two run.sh jobs at once on a 2-GPU host, one per card, each under a time limit;
# logs of both land in /tmp/res/<tag> and come back as one tarball under $OUT (the device
# tool returns at most 8 files per call).
#   bash benchmarks/gpu_host/pair.sh SECONDS "ENV=... step step" "ENV=... step"
# Each job string is `env` assignments followed by run.sh steps; job 1 runs on GPU 0,
# job 2 on GPU 1. The project must already be installed (run.sh install).
# Exits non-zero when any job did (each job's last log line is `exit N`).
set -uo pipefail
limit=$1; shift
out=${OUT:-/tmp/out}; mkdir -p "$out"; rm -rf /tmp/res
source "$(dirname "$0")/job.sh"
card=0; pids=()
for job in "$@"; do
  run_job "$card" "/tmp/res/job$card" "$job" "$limit" &
  pids+=($!); card=$((card + 1))
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
tar czf "$out/results_$(date +%H%M%S).tgz" -C /tmp/res . 2>/dev/null
for ((c = 0; c < card; c++)); do
  echo "=== job $c"; console_tail /tmp/res/job$c/console.txt -n 25
done
exit $rc
