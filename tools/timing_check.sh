#!/usr/bin/env bash
# Runs tests several times on this machine as it is, then with every core kept busy by
# a bounded background load, and prints the pass count of each condition. Tests must
# wait for events, not durations: a machine's speed must not change their result.
#   bash tools/timing_check.sh RUNS PYTEST_ARGS...
#   e.g. bash tools/timing_check.sh 10 tests/test_serving_lifecycle.py -k sigterm
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: timing_check.sh RUNS PYTEST_ARGS...}
shift
load=()
stop_load() { [ ${#load[@]} -eq 0 ] || kill "${load[@]}" 2>/dev/null; load=(); }
trap stop_load EXIT
for condition in normal loaded; do
  if [ $condition = loaded ]; then
    for _ in $(seq "$(nproc)"); do (while :; do :; done) & load+=($!); done
  fi
  passed=0
  for i in $(seq "$runs"); do
    t0=$SECONDS
    if .venv/bin/python -m pytest -q -p no:cacheprovider "$@" >"/tmp/timing_check.$condition.$i.log" 2>&1; then
      passed=$((passed + 1)); result=pass
    else
      result="FAIL (/tmp/timing_check.$condition.$i.log)"
    fi
    echo "[timing] $condition run $i: $result in $((SECONDS - t0)) s"
  done
  stop_load
  echo "[timing] $condition: $passed of $runs passed ($*)"
done
