#!/usr/bin/env bash
# Starts or stops a Docker daemon for the image builds and the containerised tests.
#   bash tools/docker_daemon.sh start   # installs Debian's docker.io if needed; exit 0 once `docker info` answers
#   bash tools/docker_daemon.sh stop    # stops only a daemon that `start` started
#   bash tools/docker_daemon.sh status  # exit 0 when a daemon answers
# A daemon that already answers is used as it is and never stopped by us.
# First try: dockerd's defaults (overlay2, docker0 bridge, iptables NAT): fast
# layers, and containers reach the package mirrors. Fallback: vfs storage with
# no bridge (slower, every layer copied; builds then need --network host).
set -uo pipefail
STATE=${SHELFDET_DOCKER_STATE:-/tmp/shelfdet-docker}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
say() { printf '[docker] %s\n' "$*" >&2; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

ensure_installed() {
  command -v dockerd >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || { say "dockerd is missing and we are not root: cannot install docker.io"; return 1; }
  command -v apt-get >/dev/null 2>&1 || { say "dockerd is missing and there is no apt-get"; return 1; }
  say "installing Debian's docker.io (apt)"
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends docker.io >"$STATE/apt.log" 2>&1 \
    || { say "apt-get install docker.io failed:"; tail -n 5 "$STATE/apt.log" >&2; return 1; }
  say "docker.io installed in $((SECONDS - t0)) s"
}

launch() {  # launch <label> [dockerd flags...]
  local label=$1; shift
  say "starting dockerd ($label)"
  setsid dockerd --pidfile "$PIDFILE" "$@" >"$LOG" 2>&1 < /dev/null &
  local i
  for i in $(seq 1 60); do
    if answers; then
      say "dockerd is up ($label, $(docker info --format '{{.Driver}}' 2>/dev/null) storage) after ${i}x0.5 s; log: $LOG"
      echo "$label" >"$STATE/mode"
      return 0
    fi
    [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null && break
    sleep 0.5
  done
  say "dockerd ($label) did not come up; last lines of its log:"
  tail -n 8 "$LOG" >&2
  stop_ours
  return 1
}

stop_ours() {
  [ -f "$PIDFILE" ] || return 0
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local i
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { say "dockerd $pid ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid"; }
  fi
  rm -f "$PIDFILE" "$STATE/mode" "$STATE/ours"
}

case "${1:-}" in
  start)
    mkdir -p "$STATE"
    if answers; then say "a Docker daemon already answers: using it"; exit 0; fi
    ensure_installed || exit 1
    rm -f "$PIDFILE"
    touch "$STATE/ours"
    if [ "${SHELFDET_DOCKER_MODE:-default}" != vfs ] && launch "defaults"; then exit 0; fi
    touch "$STATE/ours"
    launch "vfs, no bridge" --storage-driver=vfs --iptables=false --bridge=none && exit 0
    exit 1
    ;;
  stop)
    if [ -f "$STATE/ours" ] || [ -f "$PIDFILE" ]; then say "stopping dockerd"; stop_ours; else say "no daemon of ours to stop"; fi
    ;;
  status)
    answers && { say "a Docker daemon answers ($(cat "$STATE/mode" 2>/dev/null || echo 'not started by us'))"; exit 0; }
    say "no Docker daemon answers"; exit 1
    ;;
  mode)  # prints how our daemon runs: "defaults" or "vfs, no bridge" (empty: not ours)
    cat "$STATE/mode" 2>/dev/null || true
    ;;
  *) echo "usage: $0 start|stop|status|mode" >&2; exit 2 ;;
esac
