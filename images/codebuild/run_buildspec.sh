#!/usr/bin/env bash
# Runs images/codebuild/buildspec.yml's commands on this machine, the way CodeBuild does, so
# the remote recipe can be tried (and tested) without CodeBuild:
#   KIND=training STACK=cu101 REGION=us-east-2 bash images/codebuild/run_buildspec.sh [buildspec.yml]
# From the repository root; env.variables apply where the caller did not set them (CodeBuild's
# start-build overrides win too); each phase runs its commands in one bash with `set -e`, in
# CodeBuild's order, and the first failing phase ends the run. Not reproduced: runtime-versions
# (this machine's python3 is used), post_build running after a failed build, and one shell for
# all phases (a variable a phase exports does not reach the next one here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SPEC=${1:-$ROOT/images/codebuild/buildspec.yml}
SPEC=$(cd "$(dirname "$SPEC")" && pwd)/$(basename "$SPEC")  # before the cd below
PY=${PYTHON_YAML:-${VENV:-$ROOT/.venv}/bin/python}
[ -x "$PY" ] || { echo "error: $PY not found (make setup creates it; it reads the buildspec's YAML)" >&2; exit 2; }
cd "$ROOT"

"$PY" - "$SPEC" >/dev/null <<'PY' || exit 2
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
if str(spec.get("version")) != "0.2":
    sys.exit("error: {} is buildspec version {}, not 0.2".format(sys.argv[1], spec.get("version")))
PY

phase_script() {  # phase_script <phase>: that phase's commands as a bash script (env.variables first)
  "$PY" - "$SPEC" "$1" <<'PY'
import shlex, sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
print("set -e")
for key, value in ((spec.get("env") or {}).get("variables") or {}).items():
    print('[ -n "${{{0}+x}}" ] || export {0}={1}'.format(key, shlex.quote(str(value))))
for command in ((spec.get("phases") or {}).get(sys.argv[2]) or {}).get("commands") or []:
    print("printf '[buildspec] Running command %s\\n' {} >&2".format(shlex.quote(command)))
    print(command)
PY
}

for phase in install pre_build build post_build; do
  script=$(phase_script "$phase")
  [ "$(printf '%s\n' "$script" | wc -l)" -gt 1 ] || continue
  echo "[buildspec] phase $phase" >&2
  if ! bash -c "$script"; then
    echo "error: buildspec phase $phase failed" >&2
    exit 1
  fi
done
echo "[buildspec] all phases succeeded" >&2
