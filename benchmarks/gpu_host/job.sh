# Sourced by pair.sh and queue.sh: run one run.sh job, and show the end of its console.
#   run_job CARD RESULTS_DIR JOB [SECONDS]
# JOB is a string of `env` assignments followed by run.sh steps, quoted as in a shell:
#   'PYTEST_K="tensor or True" LOG_TAG=_x models'.  The job runs on GPU CARD (a JOB that sets
# CUDA_VISIBLE_DEVICES itself, e.g. "0,1" for --tp 2, wins), with the project already installed,
# its logs in RESULTS_DIR and its console in RESULTS_DIR/console.txt, whose last line is `exit N`.
run_job() {
  local card=$1 res=$2 job=$3 limit=${4:-0} words envs=() steps=() w
  mkdir -p "$res"
  eval "words=($job)"  # shell quoting inside the job string, e.g. PYTEST_K="a or b"
  for w in "${words[@]}"; do
    if [[ $w == *=* && ${#steps[@]} == 0 ]]; then envs+=("$w"); else steps+=("$w"); fi
  done
  if [ ${#steps[@]} = 0 ]; then  # run.sh would run its default steps instead
    echo "run_job: no steps in job '$job'" | tee "$res/console.txt" >&2; echo "exit 2" >> "$res/console.txt"; return 2
  fi
  echo "GPU $card: ${envs[*]} | steps: ${steps[*]}"
  CUDA_VISIBLE_DEVICES=$card SWAA_SKIP_INSTALL=1 SWAA_RESULTS_DIR=$res \
    timeout --kill-after=20 "$limit" env "${envs[@]}" bash benchmarks/gpu_host/run.sh "${steps[@]}" > "$res/console.txt" 2>&1
  local rc=$?
  echo "exit $rc" >> "$res/console.txt"
  return $rc
}

console_tail() {  # console_tail FILE TAIL_ARGS...: the end of a job's console without SGLang's import warnings
  grep -v -i "warn\|torchao\|\"\"\"Config" "$1" | tail "${@:2}"
}
