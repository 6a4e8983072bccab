#!/usr/bin/env bash
# A queue of run.sh jobs that runs in the background, one job after another, and outlives
# the device call that starts it (a new process session: the device tool leaves those running
# until the host is returned). Use it for work longer than one call's 10 minutes: start the
# queue, then spend each following call in `wait`, which brings the logs back every time.
#
#   bash benchmarks/gpu_host/queue.sh start "ENV=... step step" "ENV=... step" ...   returns at once
#   bash benchmarks/gpu_host/queue.sh wait SECONDS   until the queue ends or SECONDS pass; prints the
#       queue log and the running job's tail; all logs so far go to $OUT as one tarball.
#       Exit 0: all jobs ended with 0; 1: one failed; 3: still running.
#   bash benchmarks/gpu_host/queue.sh skip           stop the running job (every process of its session,
#       SGLang's scheduler processes included); the queue goes on with the next job
#
# Job strings as in pair.sh (job.sh): env assignments, then steps; jobs run on GPU 0
# unless they set CUDA_VISIBLE_DEVICES. The project must be installed (run.sh install).
# SWAA_QUEUE_DIR (default /tmp/queue) names the queue; two queues in two directories run side by
# side, e.g. two lanes of correctness jobs on one card (each SGLang process sizes its KV pool from
# the memory free when it starts, so keep --mem-fraction-static moderate; never time in a lane).
# Tarballs are named after the directory: queue_HHMMSS.tgz, queueB_HHMMSS.tgz.
# The queue runs from a snapshot of the tree taken at `start` (later calls re-send the tree).
set -uo pipefail
q=${SWAA_QUEUE_DIR:-/tmp/queue}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/job.sh"
session_pids() {  # session_pids SID: the processes of session SID, read from /proc (no procps needed)
  local f line fields
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    read -r -a fields <<< "${line##*) }"  # state ppid pgrp session ...
    [ "${fields[3]}" = "$1" ] && echo "${f//[^0-9]/}"
  done
}
case ${1:-} in
  start)
    shift
    [ $# -gt 0 ] || { echo "queue.sh: start needs at least one job" >&2; exit 2; }
    [ -e "$q/pid" ] && kill -0 "$(cat "$q/pid")" 2>/dev/null && { echo "queue.sh: a queue is running ($q)" >&2; exit 2; }
    rm -rf "$q"; mkdir -p "$q/tree" "$q/jobs"
    tar cf - --exclude=./.gpu --exclude=./.git -C "$here/../.." . | tar xf - -C "$q/tree"
    i=0; for job in "$@"; do printf '%s' "$job" > "$q/jobs/$(printf %02d $i)"; i=$((i + 1)); done
    (cd "$q/tree" && exec setsid nohup bash benchmarks/gpu_host/queue.sh run) > "$q/runner.log" 2>&1 < /dev/null &
    sleep 1; echo "queue.sh: $i jobs queued in $q"; cat "$q/queue.log" 2>/dev/null ;;
  run)  # the background runner (started by `start`, from the snapshot)
    echo $$ > "$q/pid"; rc=0
    for f in "$q"/jobs/*; do
      n=$(basename "$f"); job=$(cat "$f")
      echo "$(date +%T) start job $n: $job" >> "$q/queue.log"
      # each job in its own session, so that `skip` can end it and everything it started
      setsid bash -c 'source benchmarks/gpu_host/job.sh; run_job 0 "$1" "$2"' _ "$q/job$n" "$job" &
      sid=$!; echo $sid > "$q/current"; wait $sid; r=$?
      # the job's leader is gone; let the rest of its session (SGLang's processes, a `skip`) end
      # before the next job sizes its KV pool on the same GPU
      for _ in $(seq 120); do [ -z "$(session_pids $sid)" ] && break; sleep 1; done
      rm -f "$q/current"
      echo "$(date +%T) end job $n: exit $r" >> "$q/queue.log"; [ $r = 0 ] || rc=1
    done
    echo "$(date +%T) queue done: exit $rc" >> "$q/queue.log"; echo $rc > "$q/done" ;;
  wait)
    end=$((SECONDS + ${2:?wait SECONDS}))
    runner_alive() { [ -e "$q/pid" ] && kill -0 "$(cat "$q/pid")" 2>/dev/null; }
    while [ ! -e "$q/done" ] && runner_alive && [ $SECONDS -lt $end ]; do sleep 5; done
    cat "$q/queue.log" 2>/dev/null
    for d in "$q"/job*/; do [ -e "$d/console.txt" ] && last=$d; done
    [ -n "${last:-}" ] && { echo "--- ${last}console.txt"; console_tail "${last}console.txt" -c 3000; echo; }
    out=${OUT:-/tmp/out}; mkdir -p "$out"
    tar czf "$out/$(basename "$q")_$(date +%H%M%S).tgz" -C "$q" --exclude=./tree . 2>/dev/null
    if [ -e "$q/done" ]; then [ "$(cat "$q/done")" = 0 ] && exit 0 || exit 1; fi
    if ! runner_alive; then
      echo "queue.sh: no queue is running in $q (not started on this host, or its runner died)" >&2; exit 1
    fi
    exit 3 ;;
  skip)
    [ -e "$q/current" ] || { echo "queue.sh: no job running" >&2; exit 2; }
    # by session, not process group: `timeout` inside the job moves itself to a group of its own
    sid=$(cat "$q/current"); kill -TERM $(session_pids "$sid") 2>/dev/null; sleep 10
    kill -KILL $(session_pids "$sid") 2>/dev/null
    echo "$(date +%T) skipped the running job (session $sid)" >> "$q/queue.log"; cat "$q/queue.log" ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
