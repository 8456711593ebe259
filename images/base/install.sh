#!/usr/bin/env bash
# Runs inside the base image's builder stage (see Dockerfile): one script for
# every stack, driven by the build arguments from versions.env.
#   install.sh python      # system packages + the /opt/venv virtual environment
#   install.sh deps        # everything pip installs in the venv, from the stack's lock (/tmp/lock.txt, --require-hashes)
#   install.sh index-hashes LOCK  # (part of deps) the sha256 PyTorch's index publishes, for its URL wheels
#   install.sh cuda        # a CUDA compiler where the parent has none: NVIDIA's apt repository (CUDA_APT,
#                          # its runfile CUDA_RUNFILE when the repository is gone), or /opt/cuda (CUDA_PIP, CUDA_DEB)
#   install.sh detectron2  # Detectron2: the sdist, or compiled from the pinned source
#   install.sh wheel       # the shelfdet wheel from /tmp/shared into /tmp/wheels
set -euo pipefail
set -f
say() { printf '[base] %s\n' "$*"; }
VENV=/opt/venv
# The host's CA bundle (an intercepting proxy may sit between us and the
# registries); empty when the host has none. Builder stage only.
if [ -s /tmp/host-ca.crt ]; then export PIP_CERT=/tmp/host-ca.crt GIT_SSL_CAINFO=/tmp/host-ca.crt; fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir)
site() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
# Outside /opt/venv, so that the final stage (which copies the venv) has no compiler.
ASSEMBLED_CUDA=/opt/cuda
[ -x "$ASSEMBLED_CUDA/bin/nvcc" ] && export CUDA_HOME=$ASSEMBLED_CUDA PATH=$ASSEMBLED_CUDA/bin:$PATH
# NVIDIA's packages and runfile install into /usr/local/cuda-<release>.
toolkit=$(find /usr/local -maxdepth 1 -name 'cuda-*' -type d 2>/dev/null | sort | tail -n 1)
if [ -z "${CUDA_HOME:-}" ] && [ -n "$toolkit" ] && [ -x "$toolkit/bin/nvcc" ]; then
  export CUDA_HOME=$toolkit PATH=$toolkit/bin:$PATH
fi
# CUDA runtime libraries the final stage needs beside torch's (see the detectron2 step).
CUDA_RUNTIME=/opt/cuda-runtime

index_hashes() {  # index_hashes <lock>: a wheel URL the lock gives without sha256 gets the one its index publishes
  # Where locks are made, PyTorch's index cannot be read: the lock names the wheel's URL alone
  # (STACK_<STACK>_TORCH_SHA256 empty), and the build takes the `#sha256=` of that file's link in
  # the package's simple index beside it, so pip's --require-hashes still checks every byte.
  local py=$VENV/bin/python
  [ -x "$py" ] || py=python3
  "$py" - "$1" <<'PY' || exit 3
import os
import re
import ssl
import sys
import urllib.parse
import urllib.request

path = sys.argv[1]
with open(path) as f:
    lines = f.read().splitlines()
out = []
for line in lines:
    m = re.match(r"^([A-Za-z0-9_.\-]+) @ ((https?)://\S+)$", line)
    if not m:
        out.append(line)
        continue
    name, url = m.group(1), m.group(2)
    base, filename = url.rsplit("/", 1)
    wanted = urllib.parse.unquote(filename)
    index = "{}/{}/".format(base, name)
    cafile = os.environ.get("PIP_CERT") or None
    try:
        context = ssl.create_default_context(cafile=cafile) if index.startswith("https:") else None
        with urllib.request.urlopen(index, timeout=60, context=context) as r:
            page = r.read().decode("utf-8", "replace")
    except Exception as err:  # any failure to read it is the same one-line report
        msg = "error: cannot read {} for the sha256 of {} ({}): pin STACK_<STACK>_TORCH_SHA256 in versions.env, then make lock"
        sys.exit(msg.format(index, wanted, " ".join(str(err).split())))
    sha = None
    for href in re.findall(r"""href\s*=\s*["']([^"']+)["']""", page):
        link, _, fragment = href.partition("#")
        if urllib.parse.unquote(link.rsplit("/", 1)[-1]) == wanted:
            found = re.match(r"^sha256=([0-9a-fA-F]{64})$", fragment)
            if found:
                sha = found.group(1).lower()
                break
    if sha is None:
        sys.exit("error: {} publishes no sha256 for {}: pin STACK_<STACK>_TORCH_SHA256 in versions.env, then make lock"
                 .format(index, wanted))
    print("[base] {}: sha256 {}, taken from {}".format(wanted, sha, index))
    out.append("{} @ {} --hash=sha256:{}".format(name, url, sha))
with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
PY
}

fetch_pinned() {  # fetch_pinned <url> <sha256> <file>: downloaded, then checked against its pin before any use
  curl -fsSL --retry 3 -o "$3" "$1" || return 1
  if ! echo "$2  $3" | sha256sum -c --quiet - >/dev/null 2>&1; then
    # A mismatch is never a reason to try another source: the build stops.
    echo "error: $1 has sha256 $(sha256sum "$3" | cut -c1-64), not the one pinned in versions.env ($2)" >&2
    rm -f "$3"
    exit 3
  fi
}

cuda_from_apt() {  # CUDA_APT: "<repository> <its cuda-keyring .deb> <package>=<version>..."
  local repo keyring packages
  read -r repo keyring packages <<<"$CUDA_APT"
  say "CUDA from NVIDIA's apt repository $repo: $packages"
  # The keyring is the trust root of that repository (apt checks every package against it).
  fetch_pinned "$repo/$keyring" "$CUDA_KEYRING_SHA256" "/tmp/$keyring" || return 1
  dpkg -i "/tmp/$keyring" >/dev/null && rm -f "/tmp/$keyring"
  apt-get update -qq || return 1
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $packages >/dev/null || return 1
  # Held: apt would otherwise move cuBLAS to the next CUDA release's (10.2's for 10.1).
  # shellcheck disable=SC2046,SC2086
  apt-mark hold $(for p in $packages; do echo "${p%%=*}"; done) >/dev/null
  rm -rf /var/lib/apt/lists/*
}

cuda_from_runfile() {  # CUDA_RUNFILE: NVIDIA's installer, the toolkit alone
  [ -n "${CUDA_RUNFILE_SHA256:-}" ] \
    || { echo "error: $CUDA_RUNFILE has no sha256 pinned in versions.env (STACK_<STACK>_CUDA_RUNFILE_SHA256)" >&2; exit 3; }
  say "CUDA from NVIDIA's runfile $CUDA_RUNFILE (--silent --toolkit, sha256 checked)"
  fetch_pinned "$CUDA_RUNFILE" "$CUDA_RUNFILE_SHA256" /tmp/cuda.run \
    || { echo "error: cannot download $CUDA_RUNFILE" >&2; exit 3; }
  sh /tmp/cuda.run --silent --toolkit --override
  rm -f /tmp/cuda.run
}

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
  mkdir -p "$CUDA_RUNTIME"
  "$VENV/bin/python" -V
  ;;
deps)
  # The lock (locks/<stack>.txt, `make lock`) names every distribution and the sha256 of each of
  # its files: pip installs those bytes or stops. Sdists in it are built with the locked
  # setuptools and wheel (--no-build-isolation), so no unpinned build tool is fetched either.
  LOCK=/tmp/lock.txt
  echo "$LOCK_SHA256  $LOCK" | sha256sum -c --quiet - >/dev/null 2>&1 \
    || { echo "error: $LOCK is not the lock tools/images.sh named (LOCK_SHA256 $LOCK_SHA256)" >&2; exit 3; }
  # The parent's torch stack (cpu: Debian's torch, torchvision, numpy, Pillow)
  # is pinned as it is: pip must not replace the numpy that torch was built with.
  "${PIP[@]}" freeze --all | grep -iE '^(torch|torchvision|numpy|pillow)==' >/tmp/constraints.txt || true
  say "kept from the parent: $(tr '\n' ' ' </tmp/constraints.txt)"
  # cpu: the lock was resolved against Debian's python3-* packages as versions.env names them.
  system=$(sed -n 's/^# Left out (Debian[^:]*: //p' "$LOCK")
  if [ -n "$system" ]; then
    "$VENV/bin/python" - "$system" <<'PY' || exit 3
import sys
from importlib import metadata
for pin in sys.argv[1].split():
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = "none"
    if have != want:
        msg = "error: the lock was made against Debian's {} {}, the parent has {} (fix STACK_CPU_SYSTEM_PYTHON, then make lock)"
        sys.exit(msg.format(name, want, have))
PY
  fi
  # CUDA_PIP's wheels go to /opt/cuda (the cuda step), not into the venv.
  cp "$LOCK" /tmp/venv-lock.txt
  index_hashes /tmp/venv-lock.txt
  for p in ${CUDA_PIP:-}; do
    grep -viE "^${p%%==*}==" /tmp/venv-lock.txt >/tmp/venv-lock.next || true
    mv /tmp/venv-lock.next /tmp/venv-lock.txt
  done
  grep -E '^(pip|setuptools|wheel)==' "$LOCK" >/tmp/tools-lock.txt || true
  say "pip: $(grep -cE '^[A-Za-z0-9]' /tmp/venv-lock.txt) locked distributions, --require-hashes"
  # The locked setuptools and wheel first: they build the lock's sdists (--no-build-isolation).
  if [ -s /tmp/tools-lock.txt ]; then "${PIP[@]}" install -q --require-hashes --no-deps -r /tmp/tools-lock.txt; fi
  "${PIP[@]}" install -q --require-hashes --no-build-isolation -c /tmp/constraints.txt -r /tmp/venv-lock.txt
  find "$VENV" -name '__pycache__' -prune -exec rm -rf {} +
  ;;
index-hashes)
  index_hashes "$2"
  ;;
cuda)
  if [ -n "${CUDA_APT:-}" ]; then
    if [ -z "${CUDA_KEYRING_SHA256:-}" ]; then
      # An unpinned keyring is never installed: the runfile is pinned.
      [ -n "${CUDA_RUNFILE:-}" ] || { echo "error: CUDA_APT's keyring has no pinned sha256 and no CUDA_RUNFILE is pinned" >&2; exit 3; }
      say "no sha256 pinned for $(echo "$CUDA_APT" | cut -d' ' -f2) (CUDA_KEYRING_SHA256): the pinned runfile instead of NVIDIA's apt repository"
      cuda_from_runfile
    elif ! cuda_from_apt; then
      [ -n "${CUDA_RUNFILE:-}" ] || { echo "error: CUDA from $CUDA_APT failed and no CUDA_RUNFILE is pinned" >&2; exit 3; }
      say "NVIDIA's apt repository failed: falling back to the runfile"
      cuda_from_runfile
    fi
    nvcc=$(find /usr/local -maxdepth 3 -path '/usr/local/cuda-*/bin/nvcc' | head -n 1)
    [ -n "$nvcc" ] || { echo "error: no nvcc under /usr/local/cuda-* after installing CUDA" >&2; exit 3; }
    "$nvcc" --version | tail -n 1
    exit 0
  fi
  if [ -z "${CUDA_PIP:-}${CUDA_DEB:-}" ]; then
    [ "$FORCE_CUDA" = 1 ] && say "CUDA compiler: the parent's, $(command -v nvcc || echo 'none found')"
    exit 0
  fi
  # No registry here has a CUDA 12 toolkit in one piece: NVIDIA's PyPI wheels
  # (CUDA_PIP) bring ptxas, NVVM, libdevice and headers but no nvcc driver,
  # cicc, cudafe++, fatbinary or nvlink; those come from one Debian package
  # (CUDA_DEB, "<suite>/<component> <package>=<version>", the same CUDA
  # release), unpacked, not installed, so that its suite's libraries stay out.
  # The runtime headers and libcudart are those of torch's own nvidia-* wheels.
  C=$ASSEMBLED_CUDA SITE=$(site) tmp=/tmp/cuda-parts
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/deb" "$C/bin" "$C/nvvm/bin" "$C/include" "$C/lib64"
  say "CUDA from PyPI: $CUDA_PIP"
  for p in $CUDA_PIP; do
    grep -iE "^${p%%==*}==" /tmp/lock.txt || { echo "error: $p is not in the stack's lock (make lock)" >&2; exit 3; }
  done >"$tmp/cuda-lock.txt"
  "${PIP[@]}" install -q --require-hashes --no-deps --target "$tmp/pip" -r "$tmp/cuda-lock.txt"
  read -r suite package <<<"$CUDA_DEB"
  mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  echo "deb ${mirror:-http://deb.debian.org/debian} ${suite%%/*} ${suite#*/}" >"$tmp/sources.list"
  apt_opts=(-o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$tmp/lists" -o Dir::Cache::Archives="$tmp/archives"
            -o APT::Sandbox::User=root)
  say "CUDA from Debian ${suite%%/*}: $package (apt checks its hash against the signed index)"
  apt-get "${apt_opts[@]}" update -qq
  (cd "$tmp/deb" && apt-get "${apt_opts[@]}" download -qq "$package")
  dpkg-deb -x "$(find "$tmp/deb" -name '*.deb')" "$tmp/x"
  T=$tmp/x N=$tmp/pip/nvidia
  cp "$T/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$C/bin/"
  cp -r "$T/usr/lib/nvidia-cuda-toolkit/bin/crt" "$C/bin/"
  cp "$T/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$C/nvvm/bin/"
  for tool in cudafe++ fatbinary nvlink bin2c cuobjdump nvprune; do cp "$T/usr/bin/$tool" "$C/bin/"; done
  cp "$N/cuda_nvcc/bin/ptxas" "$C/bin/"
  cp -r "$N/cuda_nvcc/nvvm/lib64" "$N/cuda_nvcc/nvvm/libdevice" "$N/cuda_nvcc/nvvm/include" "$C/nvvm/"
  set +f
  for inc in "$N"/*/include "$SITE"/nvidia/*/include; do cp -rn "$inc/." "$C/include/"; done
  set -f
  find "$C/include" -name '__init__.py' -delete
  ln -s "$SITE/nvidia/cuda_runtime/lib/libcudart.so.12" "$C/lib64/libcudart.so"
  # nvcc reads this beside itself; the layout above is the toolkit's own, less targets/.
  cat >"$C/bin/nvcc.profile" <<'PROFILE'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
PROFILE
  rm -rf "$tmp"
  "$C/bin/nvcc" --version | tail -n 1
  ;;
detectron2)
  SITE=$(site)
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
      # Every requested architecture must be in the compiled extension (the final
      # stage's smoke check reads the same from the file, without cuobjdump).
      elfs=$(cuobjdump --list-elf "$so")
      for arch in ${TORCH_CUDA_ARCH_LIST//;/ }; do
        sm="sm_$(echo "${arch%+PTX}" | tr -d .)"
        grep -q "$sm" <<<"$elfs" || { echo "error: $so has no code for $sm" >&2; exit 3; }
      done
      say "compiled for: $(grep -oE 'sm_[0-9]+' <<<"$elfs" | sort -u | tr '\n' ' ')"
      # _C links the toolkit's CUDA runtime by its soname. torch 1.6's wheel bundles that
      # runtime under a hashed name (libcudart-<hash>.so.10.1), which does not satisfy it;
      # torch's nvidia-* wheels (cu12) carry the soname itself.
      for lib in $(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(libcudart[^]]*\)\]/\1/p'); do
        if find "$SITE/torch/lib" "$SITE/nvidia" -name "$lib" 2>/dev/null | grep -q .; then
          say "$lib: from torch's wheels"
        else
          cp -L "$CUDA_HOME/lib64/$lib" "$CUDA_RUNTIME/"
          say "$lib: copied from the toolkit into $CUDA_RUNTIME (torch's wheel lacks that name)"
        fi
      done
    else
      say "compiled ops: cpu only ($so)"
    fi
    ;;
  *) echo "error: DETECTRON2 must be 'sdist' or 'git:<url>@<ref>', not '$DETECTRON2'" >&2; exit 2 ;;
  esac
  find "$VENV" -name '__pycache__' -prune -exec rm -rf {} +
  ;;
wheel)
  # The locked setuptools builds it: build isolation would fetch an unpinned one.
  "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w /tmp/wheels /tmp/shared
  ls /tmp/wheels
  ;;
*) echo "usage: install.sh python|deps|index-hashes LOCK|cuda|detectron2|wheel" >&2; exit 2 ;;
esac
