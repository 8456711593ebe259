#!/usr/bin/env bash
# Puts a pinned Detectron2 source archive where the image builds and the twin
# tests look for it: sources/detectron2-<commit>.tar (git-ignored).
#   bash tools/d2_source.sh <stack> <git clone of detectron2 | GitHub .tar.gz of the commit>
#   bash tools/d2_source.sh check <stack>   # exit 0 when the archive is there and matches
#   bash tools/d2_source.sh path <stack>    # where the archive belongs
# The pin is the commit and the sha256 of `git archive --format=tar
# --prefix=detectron2-<commit>/ <commit>` (the uncompressed tar GitHub also
# serves, gzipped, at /archive/<commit>.tar.gz), from versions.env:
# D2_<STACK>_COMMIT and D2_<STACK>_TAR_SHA256.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC1091
source <(grep -E '^[A-Z0-9_]+=' "$ROOT/versions.env" | sed -E 's/^([A-Z0-9_]+)=(.*)$/\1='"'"'\2'"'"'/')
SOURCES=${SHELFDET_SOURCES:-$ROOT/sources}
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

pins() {  # pins <stack>: sets COMMIT, SHA, REF
  local up
  up=$(echo "$1" | tr '[:lower:]' '[:upper:]')
  local c="D2_${up}_COMMIT" s="D2_${up}_TAR_SHA256" r="D2_${up}_REF"
  [ -n "${!c:-}" ] || die "versions.env pins no Detectron2 source for stack '$1' (no $c)"
  COMMIT=${!c}; SHA=${!s}; REF=${!r:-$COMMIT}
}
path() { echo "$SOURCES/detectron2-$COMMIT.tar"; }
verify() { echo "$SHA  $1" | sha256sum -c --quiet - >/dev/null 2>&1; }

case "${1:-}" in
  path) pins "${2:?stack}"; path ;;
  check)
    pins "${2:?stack}"
    f=$(path)
    [ -f "$f" ] || { echo "missing: $f (Detectron2 $REF for stack $2; see docs/images.md, 'External parts')"; exit 1; }
    verify "$f" || { echo "corrupt: $f does not match D2_$(echo "$2" | tr '[:lower:]' '[:upper:]')_TAR_SHA256"; exit 1; }
    echo "ok: $f (Detectron2 $REF)" ;;
  cu101|cu12)
    pins "$1"
    src=${2:?"usage: $0 <stack> <git clone of detectron2 | .tar.gz of commit $COMMIT>"}
    mkdir -p "$SOURCES"
    out=$(path); tmp="$out.tmp"
    if [ -d "$src" ]; then
      git -C "$src" cat-file -e "$COMMIT^{commit}" 2>/dev/null \
        || die "$src has no commit $COMMIT (Detectron2 $REF): git -C $src fetch --tags"
      git -C "$src" archive --format=tar --prefix="detectron2-$COMMIT/" "$COMMIT" >"$tmp"
    elif [ -f "$src" ]; then
      gzip -dc "$src" >"$tmp" 2>/dev/null || cp "$src" "$tmp"
    else
      die "$src is neither a git clone nor an archive"
    fi
    verify "$tmp" || { rm -f "$tmp"; die "$src does not give the pinned archive of $REF (sha256 differs from versions.env); use a git clone"; }
    mv "$tmp" "$out"
    echo "ok: $out (Detectron2 $REF, sha256 verified)" ;;
  *) die "usage: $0 <cu101|cu12> <source> | check <stack> | path <stack>" ;;
esac
