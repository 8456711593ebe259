#!/usr/bin/env bash
# Runs inside the base image's builder stage (see Dockerfile): one script for
# every stack, driven by the build arguments from versions.env.
#   install.sh python   # system packages + the /opt/venv virtual environment
#   install.sh deps     # torch (GPU stacks), requirements, Detectron2
#   install.sh wheel    # the shelfdet wheel from /tmp/shared into /tmp/wheels
set -euo pipefail
set -f
say() { printf '[base] %s\n' "$*"; }
VENV=/opt/venv
# The host's CA bundle (an intercepting proxy may sit between us and the
# registries); empty when the host has none. Builder stage only.
if [ -s /tmp/host-ca.crt ]; then export PIP_CERT=/tmp/host-ca.crt GIT_SSL_CAINFO=/tmp/host-ca.crt; fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir)

case "$1" in
python)
  if [ -n "${APT_BUILD:-}" ]; then
    say "apt: $APT_BUILD"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $APT_BUILD >/dev/null
    rm -rf /var/lib/apt/lists/*
  fi
  # cpu: torch comes from the parent's Debian packages, so the venv sees them.
  flags=()
  [ -z "${TORCH_PIP:-}" ] && flags=(--system-site-packages)
  "$PYTHON" -m venv "${flags[@]}" "$VENV"
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q $PIP_PIN
  "$VENV/bin/python" -V
  ;;
deps)
  # The parent's torch stack (cpu: Debian's torch, torchvision, numpy, Pillow)
  # is pinned as it is: pip must not replace the numpy that torch was built
  # with. Other parent packages may be shadowed by newer ones in the venv.
  "${PIP[@]}" freeze --all | grep -iE '^(torch|torchvision|numpy|pillow)==' >/tmp/constraints.txt || true
  say "kept from the parent: $(tr '\n' ' ' </tmp/constraints.txt)"
  index=()
  case "${TORCH_INDEX:-}" in
    "") ;;
    *.html) index=(--find-links "$TORCH_INDEX") ;;
    *) index=(--extra-index-url "$TORCH_INDEX") ;;
  esac
  say "pip: ${TORCH_PIP:-(torch from the parent)} + requirements"
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q "${index[@]}" -c /tmp/constraints.txt $TORCH_PIP $REQUIREMENTS
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  case "$DETECTRON2" in
  sdist)
    # The sdist has no C++ sources: fetch it, check its sha256, unpack its package.
    say "Detectron2 from $DETECTRON2_SDIST (sha256 checked)"
    dl=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: -d "$dl" "$DETECTRON2_SDIST"
    tarball=$(find "$dl" -name '*.tar.gz' | head -n 1)
    echo "$DETECTRON2_SDIST_SHA256  $tarball" | sha256sum -c --quiet -
    tar -xzf "$tarball" -C "$dl"
    cp -r "$(find "$dl" -mindepth 2 -maxdepth 2 -type d -name detectron2)" "$SITE/detectron2"
    chmod -R a+rX "$SITE/detectron2"  # the sdist's files are 0640: unreadable for the serving user
    rm -rf "$dl"
    ;;
  git:*)
    # Compiled from source with the stack's arch list, so that it takes effect.
    spec=${DETECTRON2#git:}; url=${spec%@*}; ref=${spec##*@}
    if [ -s /tmp/detectron2-src.tar ]; then
      say "Detectron2 $ref from the pinned archive (sha256 checked)"
      echo "$DETECTRON2_SRC_SHA256  /tmp/detectron2-src.tar" | sha256sum -c --quiet -
      mkdir /tmp/detectron2
      tar -xf /tmp/detectron2-src.tar -C /tmp/detectron2 --strip-components=1
    else
      say "Detectron2 from $url at $ref"
      git clone -q "$url" /tmp/detectron2
      git -C /tmp/detectron2 checkout -q "$ref"
      [ "$(git -C /tmp/detectron2 rev-parse HEAD)" = "$ref" ] \
        || { echo "error: $url at $ref is commit $(git -C /tmp/detectron2 rev-parse HEAD)" >&2; exit 3; }
    fi
    rm -f /tmp/detectron2-src.tar
    say "compiling: TORCH_CUDA_ARCH_LIST='$TORCH_CUDA_ARCH_LIST' FORCE_CUDA=$FORCE_CUDA MAX_JOBS=${MAX_JOBS:-2}"
    TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-2}" \
      "${PIP[@]}" install -q --no-deps --no-build-isolation /tmp/detectron2
    rm -rf /tmp/detectron2
    so=$(find "$SITE/detectron2" -name '_C*.so' | head -n 1)
    [ -n "$so" ] || { echo "error: Detectron2 was built without its _C extension" >&2; exit 3; }
    if [ "$FORCE_CUDA" = 1 ]; then
      # Every requested architecture must be in the compiled extension.
      elfs=$(cuobjdump --list-elf "$so")
      for arch in ${TORCH_CUDA_ARCH_LIST//;/ }; do
        sm="sm_$(echo "${arch%+PTX}" | tr -d .)"
        grep -q "$sm" <<<"$elfs" || { echo "error: $so has no code for $sm" >&2; exit 3; }
      done
      say "compiled for: $(grep -oE 'sm_[0-9]+' <<<"$elfs" | sort -u | tr '\n' ' ')"
      # For the final stage's smoke check, whose runtime parent may have no cuobjdump.
      mkdir -p "$VENV/share/shelfdet"
      echo "$elfs" >"$VENV/share/shelfdet/detectron2-archs.txt"
    else
      say "compiled ops: cpu only ($so)"
    fi
    ;;
  *) echo "error: DETECTRON2 must be 'sdist' or 'git:<url>@<ref>', not '$DETECTRON2'" >&2; exit 2 ;;
  esac
  find "$VENV" -name '__pycache__' -prune -exec rm -rf {} +
  ;;
wheel)
  "${PIP[@]}" wheel -q --no-deps -w /tmp/wheels /tmp/shared
  ls /tmp/wheels
  ;;
*) echo "usage: install.sh python|deps|wheel" >&2; exit 2 ;;
esac
