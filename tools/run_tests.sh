#!/usr/bin/env bash
# `make test`: the whole suite. Runs in .venv (the images issue adds the
# containerised path when a Docker daemon is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[test] running the suite in .venv"
exec .venv/bin/python -m pytest tests "$@"
