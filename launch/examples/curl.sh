#!/usr/bin/env bash
# The OpenAI-compatible API of a SWAA server with curl: chat, streaming chat, completion.
# Usage: bash launch/examples/curl.sh [URL]     (default http://127.0.0.1:30000)
# Python equivalent: launch/examples/openai_client.py
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
URL=${1:-http://127.0.0.1:30000}

echo "[chat]"
curl -sS --fail-with-body "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "default", "max_tokens": 64, "temperature": 0,
  "messages": [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
               {"role": "user", "content": "What is the capital of France?"}]}'
echo

echo "[stream]"   # server-sent events: one "data: {...}" line per chunk, then "data: [DONE]"
curl -sS -N --fail-with-body "$URL/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "default", "max_tokens": 64, "temperature": 0, "stream": true,
  "messages": [{"role": "user", "content": "Count from 1 to 5, separated by commas."}]}'
echo

echo "[completion]"
curl -sS --fail-with-body "$URL/v1/completions" -H 'Content-Type: application/json' -d '{
  "model": "default", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}'
echo
