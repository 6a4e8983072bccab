#!/usr/bin/env bash
# Start an SGLang server with SWAA (needs an NVIDIA GPU), on port 30000 unless PORT is set.
# Usage: bash launch/examples/serve.sh [preset|recipe] [extra server flags...]
#   preset  the embedded SmolLM2-135M-Instruct with the 'balanced' preset (default)
#   recipe  Qwen3-4B-Instruct-2507 from the recipe launch/qwen3-4b-balanced.yaml, stock SGLang launcher
# Then: launch/examples/openai_client.py, frontend_program.py or curl.sh; stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-preset}
[ $# -gt 0 ] && shift
case "$mode" in
  preset)  # SGLang's server plus --swaa-* flags; add --model-path ... for your model
    exec python -m swaa_sglang.launch_server --swaa-preset balanced --port "${PORT:-30000}" "$@" ;;
  recipe)  # SGLang's own --config; flags after it override the file's values
    exec python -m sglang.launch_server --config launch/qwen3-4b-balanced.yaml --port "${PORT:-30000}" "$@" ;;
  -h|--help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "unknown mode '$mode'; try --help" >&2; exit 2 ;;
esac
