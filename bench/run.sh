#!/usr/bin/env bash
# `make bench`: the gateway overhead benchmark (see bench/bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk (apt-get)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else sudo apt-get install -y wrk >/dev/null; fi
fi
exec .venv/bin/python bench/bench.py "$@"
