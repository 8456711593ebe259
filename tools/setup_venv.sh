#!/usr/bin/env bash
# Creates .venv with the pinned local stack from versions.env.
# Called by make (the .venv/.stamp rule); safe to run again.
set -euo pipefail
set -f  # pins such as moto[server] must not glob
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source <(grep -E '^[A-Z0-9_]+=' versions.env | sed -E 's/^([A-Z0-9_]+)=(.*)$/\1='"'"'\2'"'"'/')

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*"; }

"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' \
  || { echo "error: Python >= 3.10 is needed for the local stack ($PY is $("$PY" -V 2>&1))" >&2; exit 2; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
# No cache: torch and its CUDA libraries are several GB, kept once in the venv is enough (disks are shared).
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir -q)

# --isolated skips the machine's find-links folder, whose CPU-only torch has no
# matching torchvision; PyPI's (CUDA) pair runs on the CPU too.
if ! "$VENV/bin/python" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$LOCAL_TORCH' or torchvision.__version__.split('+')[0] != '$LOCAL_TORCHVISION')" 2>/dev/null; then
  say "installing torch $LOCAL_TORCH + torchvision $LOCAL_TORCHVISION (a few minutes, once)"
  "${PIP[@]}" install --isolated "torch==$LOCAL_TORCH" "torchvision==$LOCAL_TORCHVISION" "$LOCAL_SETUPTOOLS"
fi

say "installing pinned requirements"
# shellcheck disable=SC2086
"${PIP[@]}" install "$LOCAL_SETUPTOOLS" $LOCAL_REQUIREMENTS 2>&1 | grep -v "is ignored: it is neither" || true
"${PIP[@]}" check >/dev/null 2>&1 || true

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! "$VENV/bin/python" -c 'import detectron2, sys; sys.exit(detectron2.__version__ != "0.6")' 2>/dev/null; then
  say "installing Detectron2 from $DETECTRON2_SDIST (sha256 checked)"
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  # The sdist has no C++ sources, so it cannot be built: fetch it, verify it,
  # and unpack its pure-Python package (model-zoo configs included).
  "${PIP[@]}" download --no-deps --no-build-isolation --no-binary :all: -d "$dl" "$DETECTRON2_SDIST" 2>&1 \
    | grep -v "is ignored: it is neither" || true
  tarball=$(find "$dl" -name '*.tar.gz' | head -n 1)
  echo "$DETECTRON2_SDIST_SHA256  $tarball" | sha256sum -c --quiet - \
    || { echo "error: sha256 of $tarball does not match DETECTRON2_SDIST_SHA256 in versions.env" >&2; exit 3; }
  tar -xzf "$tarball" -C "$dl"
  rm -rf "$SITE/detectron2"
  cp -r "$(find "$dl" -mindepth 2 -maxdepth 2 -type d -name detectron2)" "$SITE/detectron2"
fi

say "installing the shelfdet package (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e shared 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c 'import shelfdet.core.compat as c; c.apply(); import detectron2.modeling, detectron2.evaluation; print("[setup] ok: detectron2", __import__("detectron2").__version__, "torch", __import__("torch").__version__)'
