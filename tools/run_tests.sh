#!/usr/bin/env bash
# `make test`: the whole suite.
# - A Docker daemon answers: build the cpu images (base, training, serving and
#   the test image = training + pytest/moto), run the suite inside the test
#   image with the repo mounted at /src, then the container contract tests
#   (tests/test_container_*.py: `docker run IMAGE train` / `serve`) from .venv
#   against the images just built.
# - No daemon, or the images cannot be built: the suite in .venv (the contract
#   tests then skip, saying why).
# SHELFDET_TEST_IN=venv|image|auto (default auto) forces one path.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf '[test] %s\n' "$*"; }
MODE=${SHELFDET_TEST_IN:-auto}
STACK=cpu

in_venv() {
  say "running the suite in .venv ($1)"
  exec .venv/bin/python -m pytest tests "${@:2}"
}

if [ "$MODE" = venv ]; then in_venv "SHELFDET_TEST_IN=venv" "$@"; fi
if ! timeout 10 docker info >/dev/null 2>&1; then
  [ "$MODE" = image ] && { echo "error: SHELFDET_TEST_IN=image but no Docker daemon answers" >&2; exit 2; }
  in_venv "no Docker daemon answers; \`bash tools/docker_daemon.sh start\` starts one" "$@"
fi

t0=$SECONDS
export IMAGE_REV
IMAGE_REV=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
for image in base training serving test; do
  if ! timeout "${SHELFDET_BUILD_TIMEOUT:-1500}" bash tools/images.sh build "$image" "$STACK" >/dev/null; then
    [ "$MODE" = image ] && { echo "error: building the $STACK $image image failed" >&2; exit 1; }
    say "WARNING: building the $STACK $image image failed (output above)."
    in_venv "fallback after the failed image build" "$@"
  fi
done
# The GPU stacks' CPU twins (tests/test_container_stacks.py) need their pinned
# Detectron2 source (README, "Detectron2 sources") and one earlier
# `make build STACK=<twin>`: this rebuilds them for the current code from the
# layer cache, never a first from-scratch compile. Others skip, saying why.
for twin in ${SHELFDET_TWINS-cu101cpu cu12}; do
  pin=${twin%cpu}
  if ! bash tools/d2_source.sh check "$pin" >/dev/null; then
    say "twin $twin: $(bash tools/d2_source.sh check "$pin") -> its tests skip"; continue
  fi
  if [ -z "$(docker images -q --filter "label=shelfdet.stack=$twin" 2>/dev/null | head -n 1)" ]; then
    say "twin $twin: never built here (make build STACK=$twin) -> its tests skip"; continue
  fi
  t1=$SECONDS
  for image in base training serving; do
    if ! timeout "${SHELFDET_BUILD_TIMEOUT:-1500}" bash tools/images.sh build "$image" "$twin" >/dev/null; then
      echo "error: building the $twin $image image failed" >&2; exit 1
    fi
  done
  say "twin $twin images built in $((SECONDS - t1)) s"
done

TEST_IMAGE=$(bash tools/images.sh name test "$STACK")
export SHELFDET_TRAINING_IMAGE SHELFDET_SERVING_IMAGE
SHELFDET_TRAINING_IMAGE=$(bash tools/images.sh name training "$STACK")
SHELFDET_SERVING_IMAGE=$(bash tools/images.sh name serving "$STACK")
say "cpu images built in $((SECONDS - t0)) s"

t0=$SECONDS
say "running the suite inside $TEST_IMAGE (= $SHELFDET_TRAINING_IMAGE + test tools; repo mounted at /src)"
# VENV: Make targets that tests call use the image's venv (its stamp is touched
# so that Make never tries to set it up); SHELFDET_VERSIONS_ENV: the launcher
# code is installed as a wheel there, away from the repo's versions.env.
docker run --rm --init -v "$PWD":/src -w /src -e CI -e PYTHONDONTWRITEBYTECODE=1 \
  -e VENV=/opt/venv -e SHELFDET_VERSIONS_ENV=/src/versions.env "$TEST_IMAGE" \
  bash -c 'touch /opt/venv/.stamp && exec python -m pytest -p no:cacheprovider tests --ignore-glob="tests/test_container_*" "$@"' \
  pytest "$@"
rc_suite=$?
say "suite in $TEST_IMAGE: exit $rc_suite after $((SECONDS - t0)) s"

t0=$SECONDS
say "running the container contract tests (.venv -> $SHELFDET_TRAINING_IMAGE, $SHELFDET_SERVING_IMAGE)"
.venv/bin/python -m pytest -p no:cacheprovider tests/test_container_*.py "$@"
rc_contract=$?
[ $rc_contract -eq 5 ] && rc_contract=0   # all deselected by the caller's -k: not a failure
say "contract tests: exit $rc_contract after $((SECONDS - t0)) s"
[ $rc_suite -eq 0 ] && [ $rc_contract -eq 0 ]
