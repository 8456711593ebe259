#!/usr/bin/env bash
# `make test`: the whole suite.
# - A Docker daemon answers: build the cpu images (base, training, serving and
#   the test image = training + pytest/moto) and the slim serving image
#   (cpu-slim, SHELFDET_SLIM_SERVING_IMAGE), run the suite inside the test
#   image with the repo mounted at /src, then the container contract tests
#   (tests/test_container_*.py: `docker run IMAGE train` / `serve`) from .venv
#   against the images just built.
# - No daemon: the suite in .venv (the contract tests then skip, saying why).
# - A daemon, but an image does not build: with CI set (CI=true), or with
#   SHELFDET_TEST_IN=image, an error (exit 1); for a developer, a loud warning
#   and the suite in .venv.
# The image names are computed once, at the start (SHELFDET_IMAGE_NAMES): a file
# edited mid-run cannot split the images of one run across two tags.
# SHELFDET_TEST_IN=venv|image|auto (default auto) forces one path.
set -uo pipefail
cd "$(dirname "$0")/.."
say() { printf '[test] %s\n' "$*"; }
MODE=${SHELFDET_TEST_IN:-auto}
# `make test` exports every Make variable (the Makefile's `export`): tests that run make
# themselves must meet its defaults (ALGO, MODEL_DIR, STACK, ...), not this run's values.
for var in $(sed -nE 's/^([A-Z][A-Z0-9_]*) *[?:]?=.*/\1/p' Makefile | grep -vx SHELL); do unset "$var"; done
STACK=cpu
ci() { case "${CI:-}" in "" | 0 | false | False | FALSE | no) return 1 ;; *) return 0 ;; esac; }

build_failed() {  # build_failed <step> [pytest args]: an error in CI (or SHELFDET_TEST_IN=image), else a loud fallback
  if [ "$MODE" = image ] || ci; then
    echo "error: $1 failed (output above); with ${CI:+CI=$CI and }a Docker daemon up, make test needs the images (no fallback to .venv)" >&2
    exit 1
  fi
  local bar="[test] ##########################################################################"
  printf '%s\n' "$bar" "[test] WARNING: $1 failed (output above)." \
    "[test] WARNING: falling back to the suite in .venv: the container tests (tests/test_container_*.py) SKIP." \
    "[test] WARNING: the images are NOT tested. In CI (CI=true) this is an error." "$bar" >&2
  in_venv "fallback after the failed image build" "${@:2}"
}

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
export SHELFDET_IMAGE_NAMES
named=$STACK
names=$(SHELFDET_IMAGE_NAMES= bash tools/images.sh tags "$STACK") || build_failed "naming the $STACK images" "$@"
SHELFDET_IMAGE_NAMES=$(echo "$names" | tr '\n' ' ')
names=$(bash tools/images.sh name test "$STACK") || build_failed "naming the $STACK test image" "$@"
SHELFDET_IMAGE_NAMES+="$names"
# The slim serving image (stack cpu-slim: exported models, no torch): wheels only, no compile.
SLIM=cpu-slim
names=$(bash tools/images.sh name serving "$SLIM") || build_failed "naming the $SLIM serving image" "$@"
SHELFDET_IMAGE_NAMES+=" $names"
named+=" $SLIM"
for image in base training serving test; do
  if ! timeout "${SHELFDET_BUILD_TIMEOUT:-1500}" bash tools/images.sh build "$image" "$STACK" >/dev/null; then
    build_failed "building the $STACK $image image" "$@"
  fi
done
t1=$SECONDS
if ! timeout "${SHELFDET_BUILD_TIMEOUT:-1500}" bash tools/images.sh build serving "$SLIM" >/dev/null; then
  build_failed "building the $SLIM serving image" "$@"
fi
say "$SLIM serving image built in $((SECONDS - t1)) s"
# The GPU stacks' CPU twins (tests/test_container_stacks.py) need their pinned
# Detectron2 source (docs/images.md, "External parts") and one earlier
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
  names=$(SHELFDET_IMAGE_NAMES= bash tools/images.sh tags "$twin") || { echo "error: naming the $twin images failed" >&2; exit 1; }
  SHELFDET_IMAGE_NAMES+=" $(echo "$names" | tr '\n' ' ')"
  named+=" $twin"
  for image in base training serving; do
    if ! timeout "${SHELFDET_BUILD_TIMEOUT:-1500}" bash tools/images.sh build "$image" "$twin" >/dev/null; then
      echo "error: building the $twin $image image failed" >&2; exit 1
    fi
  done
  say "twin $twin images built in $((SECONDS - t1)) s"
done

TEST_IMAGE=$(bash tools/images.sh name test "$STACK")
export SHELFDET_TRAINING_IMAGE SHELFDET_SERVING_IMAGE SHELFDET_SLIM_SERVING_IMAGE
SHELFDET_TRAINING_IMAGE=$(bash tools/images.sh name training "$STACK")
SHELFDET_SERVING_IMAGE=$(bash tools/images.sh name serving "$STACK")
SHELFDET_SLIM_SERVING_IMAGE=$(bash tools/images.sh name serving "$SLIM")
say "cpu images built in $((SECONDS - t0)) s"

t0=$SECONDS
say "running the suite inside $TEST_IMAGE (= $SHELFDET_TRAINING_IMAGE + test tools; repo mounted at /src)"
# VENV: Make targets that tests call use the image's venv (its stamp is touched
# so that Make never tries to set it up); SHELFDET_VERSIONS_ENV: the launcher
# code is installed as a wheel there, away from the repo's versions.env.
# Both outputs are kept: the failing tests of both runs are named again as the last lines.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
docker run --rm --init -v "$PWD":/src -w /src -e CI -e PYTHONDONTWRITEBYTECODE=1 \
  -e VENV=/opt/venv -e SHELFDET_VERSIONS_ENV=/src/versions.env "$TEST_IMAGE" \
  bash -c 'touch /opt/venv/.stamp && exec python -m pytest -p no:cacheprovider tests --ignore-glob="tests/test_container_*" "$@"' \
  pytest "$@" 2>&1 | tee "$logs/suite"
rc_suite=${PIPESTATUS[0]}
say "suite in $TEST_IMAGE: exit $rc_suite after $((SECONDS - t0)) s"

t0=$SECONDS
say "running the container contract tests (.venv -> $SHELFDET_TRAINING_IMAGE, $SHELFDET_SERVING_IMAGE, $SHELFDET_SLIM_SERVING_IMAGE)"
.venv/bin/python -m pytest -p no:cacheprovider tests/test_container_*.py "$@" 2>&1 | tee "$logs/contract"
rc_contract=${PIPESTATUS[0]}
[ $rc_contract -eq 5 ] && rc_contract=0   # all deselected by the caller's -k: not a failure
say "contract tests: exit $rc_contract after $((SECONDS - t0)) s"

# A file that goes into an image changed during the run: the images built then may hold either
# version under the name computed at the start, so that name is taken off (a tag names its content).
fresh=
for stack in $named; do
  fresh+=" $(SHELFDET_IMAGE_NAMES= bash tools/images.sh tags "$stack" 2>/dev/null | tr '\n' ' ')"
done
fresh+=" $(SHELFDET_IMAGE_NAMES="$fresh" bash tools/images.sh name test "$STACK" 2>/dev/null)"
stale=
for pinned in $SHELFDET_IMAGE_NAMES; do [[ " $fresh " == *" $pinned "* ]] || stale+=" $pinned"; done
if [ -n "$stale" ]; then
  say "WARNING: files that go into the images changed during the run; untagging:$stale (make build rebuilds them)"
  # shellcheck disable=SC2086
  docker image rm $stale >/dev/null 2>&1 || true
fi
if [ $rc_suite -ne 0 ] || [ $rc_contract -ne 0 ]; then
  say "FAILED: suite in $TEST_IMAGE exit $rc_suite, contract tests exit $rc_contract"
  failed=$(grep -hE '^(FAILED|ERROR) ' "$logs/suite" "$logs/contract")
  if [ -n "$failed" ]; then
    sed 's/^/[test]   /' <<<"$failed"
  else
    say "  no test is named as failed: pytest itself stopped (output above)"
  fi
  exit 1
fi
