#!/usr/bin/env bash
# Builds and names the project's images from versions.env.
#   bash tools/images.sh build <base|training|serving|test> <cpu|cu101|cu12|cu101cpu>
#   bash tools/images.sh build serving cpu-slim   # the slim serving image (images/serving-slim): exported models, no torch
#   PARENT=nvidia bash tools/images.sh build base cu12   # a stack's parent variant (STACK_CU12_NVIDIA_*)
#   NO_CACHE=1 bash tools/images.sh build base cu12      # every step again (a cold build's time)
#   bash tools/images.sh tags <stack>            # the tags `build` gives, one a line (`make tag`)
#   bash tools/images.sh name <image> <stack>    # one tag
#   bash tools/images.sh hash <image> <stack>    # its content hash (the tag's last part)
#   bash tools/images.sh buildargs <image> <stack>  # the --build-arg list (for the static tests)
#   bash tools/images.sh context <image> <stack>    # the files its build context holds, one a line
#   bash tools/images.sh parents <stack>         # its public parents: present, pulled, or debootstrap stand-ins
#   bash tools/images.sh prebuild <stack>        # base, training, serving (+ test for cpu), in order
#   PARENT=debootstrap bash tools/images.sh build base cpu  # stand-ins even where the parents can be pulled
#   BASE_IMAGE=<uri> bash tools/images.sh build training cu101  # on a base pushed earlier (make push-base)
# Parents are public images (versions.env PARENT_*), always linux/amd64. A parent that
# cannot be pulled gets a stand-in of the same release under its name (debootstrap
# minbase + docker import), when versions.env names a suite for it; the Dockerfile's apt
# lines then run in it as they would in the pulled image.
# Tag: <IMAGE_REPO_*>:<IMAGE_VERSION>-<stack>-<content hash>, the hash of exactly what goes
# into the image (tools/image_hash.py: its Dockerfile, the context files it copies, its build
# args, which name the parent's tag), so an uncommitted edit changes it and a README edit does
# not. `build` of training, serving or test builds a missing parent first. The build context
# is a tar of the files the Dockerfile copies that git tracks (working-tree content;
# .dockerignore applied; see tools/image_hash.py), plus what this script writes into
# images/.build (the host's CA bundle, the stack's lock, the Detectron2 archive).
# Pip installs read the stack's lock (locks/<stack>.txt, `make lock`): a lock that no longer
# matches versions.env stops the build. Classic builder (BuildKit is not packaged here).
# Pins, for tests and `make test`: SHELFDET_IMAGE_TAG=<x> ends every tag with x;
# SHELFDET_IMAGE_NAMES='<name> ...' (full names, e.g. from `tags`) are used as they are.
set -euo pipefail
set -f
shopt -s inherit_errexit
# Functions here also run as `( build ... ) || exit 1`, where bash ignores set -e:
# every step whose failure matters ends in `|| die` or `|| return 1`.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck disable=SC1091
source <(grep -E '^[A-Z0-9_]+=' versions.env | sed -E 's/^([A-Z0-9_]+)=(.*)$/\1='"'"'\2'"'"'/')
# The classic builder unless the caller asks for BuildKit: BuildKit/buildx is not packaged everywhere.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
PLATFORM=linux/amd64
say() { printf '[images] %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

STACKS="cpu cu101 cu12 cu101cpu cpu-slim"
IMAGES="base training serving test"
# Stacks with a serving image only, from images/serving-slim/Dockerfile (no base: no torch, no Detectron2).
SLIM_STACKS="cpu-slim"
SLIM_KEYS="BUILDER_IMAGE RUNTIME_IMAGE PYTHON APT_BUILD APT_RUNTIME"
# Build arguments each stack defines (STACK_<STACK>_<KEY> in versions.env).
STACK_KEYS="BUILDER_IMAGE RUNTIME_IMAGE PYTHON APT_BUILD APT_RUNTIME TORCH_PIP TORCH_INDEX CUDA_PIP CUDA_DEB CUDA_APT CUDA_RUNFILE CUDA_RUNFILE_SHA256 CUDA_KEYRING_SHA256 DETECTRON2 TORCH_CUDA_ARCH_LIST FORCE_CUDA REQUIREMENTS"
# PARENT=<variant> (e.g. PARENT=nvidia for cu12) takes STACK_<STACK>_<VARIANT>_<KEY>
# where versions.env has one: the same stack on other parents (NVIDIA's CUDA images).
# PARENT=debootstrap keeps the stack's parents and makes them from debootstrap.
PARENT=${PARENT:-}
BASE_IMAGE=${BASE_IMAGE:-}

command -v python3 >/dev/null 2>&1 || die "python3 is needed to compute image tags (tools/image_hash.py)"

check_stack() { case " $STACKS " in *" $1 "*) ;; *) die "unknown stack '$1' (one of: $STACKS)";; esac; }
check_image() { case " $IMAGES " in *" $1 "*) ;; *) die "unknown image '$1' (one of: $IMAGES)";; esac; }
slim() { case " $SLIM_STACKS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
check_pair() {  # check_pair <image> <stack>: a slim stack has its serving image only
  slim "$2" && [ "$1" != serving ] && die "stack $2 has a serving image only (make build-serving STACK=$2)"
  return 0
}
dockerdir() {  # dockerdir <image> <stack>: the folder under images/ with its Dockerfile
  if [ "$1" = serving ] && slim "$2"; then echo serving-slim; else echo "$1"; fi
}

content_hash() {  # content_hash <image> <stack>: what tools/image_hash.py makes of the image's inputs
  local args
  args=$(buildargs "$1" "$2")
  printf '%s\n' "$args" | python3 "$ROOT/tools/image_hash.py" --root "$ROOT" "$(dockerdir "$1" "$2")"
}

name() {  # name <image> <stack>
  local repo prefix pinned suffix
  case $1 in
    base) repo=$IMAGE_REPO_BASE ;; training) repo=$IMAGE_REPO_TRAINING ;;
    serving) repo=$IMAGE_REPO_SERVING ;; test) repo=$IMAGE_REPO_TEST ;;
  esac
  prefix="$repo:$IMAGE_VERSION-$2-"
  for pinned in ${SHELFDET_IMAGE_NAMES:-}; do
    [[ "$pinned" == "$prefix"* ]] && { echo "$pinned"; return 0; }
  done
  if [ -n "${SHELFDET_IMAGE_TAG:-}" ]; then suffix=$SHELFDET_IMAGE_TAG; else suffix=$(content_hash "$1" "$2"); fi
  printf '%s%s\n' "$prefix" "$suffix"
}

stack_var() {  # stack_var <stack> <KEY>: the versions.env variable that holds it (PARENT's variant first)
  local up variant
  up=$(echo "$1" | tr '[:lower:]-' '[:upper:]_')
  if [ -n "$PARENT" ]; then
    variant="STACK_${up}_$(echo "$PARENT" | tr '[:lower:]-' '[:upper:]_')_$2"
    if [ -n "${!variant+x}" ]; then echo "$variant"; return 0; fi
  fi
  echo "STACK_${up}_$2"
}

check_parent() {  # check_parent <stack>: PARENT names a variant the stack has
  [ -n "$PARENT" ] && [ "$PARENT" != debootstrap ] || return 0
  local prefix
  prefix="STACK_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')_$(echo "$PARENT" | tr '[:lower:]-' '[:upper:]_')_"
  grep -q "^${prefix}[A-Z_]*=" versions.env || die "stack $1 has no parent variant '$PARENT' (no ${prefix}* in versions.env)"
}

buildargs() {  # buildargs <image> <stack>: one KEY=VALUE a line
  local image=$1 stack=$2 key var parent
  if slim "$stack"; then
    for key in $SLIM_KEYS; do
      var=$(stack_var "$stack" "$key")
      [ -n "${!var+x}" ] || die "versions.env has no $var"
      printf '%s=%s\n' "$key" "${!var}"
    done
    printf 'STACK=%s\nIMAGE_VERSION=%s\nPIP_PIN=%s\n' "$stack" "$IMAGE_VERSION" "$PIP_PIN"
    printf 'LOCK_SHA256=%s\n' "$(lock_sha "$stack")"
    return 0
  fi
  case $image in
    base)
      for key in $STACK_KEYS; do
        var=$(stack_var "$stack" "$key")
        [ -n "${!var+x}" ] || die "versions.env has no $var"
        printf '%s=%s\n' "$key" "${!var}"
      done
      printf 'DETECTRON2_SDIST=%s\nDETECTRON2_SDIST_SHA256=%s\n' "$DETECTRON2_SDIST" "$DETECTRON2_SDIST_SHA256"
      printf 'DETECTRON2_SRC_SHA256=%s\n' "$(src_sha "$stack")"
      printf 'STACK=%s\nIMAGE_VERSION=%s\nPIP_PIN=%s\n' "$stack" "$IMAGE_VERSION" "$PIP_PIN"
      printf 'LOCK_SHA256=%s\n' "$(lock_sha "$stack")" ;;
    training|serving) parent=${BASE_IMAGE:-$(name base "$stack")}; printf 'BASE_IMAGE=%s\n' "$parent" ;;
    test) parent=$(name training "$stack")
          printf 'TRAINING_IMAGE=%s\nTEST_REQUIREMENTS=%s\nMLFLOW_SERVER_REQUIREMENTS=%s\n' "$parent" "$TEST_REQUIREMENTS" "$MLFLOW_SERVER_REQUIREMENTS"
          printf 'TEST_LOCK_SHA256=%s\n' "$(lock_sha test mlflow-server)" ;;
  esac
}

locks_of() {  # locks_of <image> <stack>: the lock files (locks/<name>.txt) its pip installs read
  if slim "$2"; then echo "$2"; return 0; fi
  case $1 in base) echo "$2" ;; test) echo "test mlflow-server" ;; esac
}

lock_sha() {  # lock_sha <name>...: the sha256 of those locks, one after the other (a build argument: it names the tag)
  local name
  for name in "$@"; do
    [ -f "locks/$name.txt" ] || die "locks/$name.txt is missing: \`make lock\` writes it from versions.env"
  done
  for name in "$@"; do cat "locks/$name.txt"; done | sha256sum | cut -c1-64
}

check_locks() {  # check_locks <image> <stack>: its locks match versions.env, else one line
  # A wheel URL without sha256 (cu101's torch, no STACK_CU101_TORCH_SHA256) is no reason to stop:
  # install.sh deps takes the sha256 its index publishes before pip runs.
  local names name err
  names=$(locks_of "$1" "$2")
  [ -n "$names" ] || return 0
  for name in $names; do
    [ -f "locks/$name.txt" ] || die "locks/$name.txt is missing: \`make lock\` writes it from versions.env"
    err=$(python3 tools/lock.py --stale "$name") || die "tools/lock.py --stale $name failed (output above)"
    [ -z "$err" ] || die "locks/$name.txt is stale: $err changed in versions.env since it was made (make lock)"
    cp "locks/$name.txt" "images/.build/lock-$name.txt"
  done
}

context() {  # context <dockerdir> <file>: the build context as a tar: what the Dockerfile copies, git-tracked files only
  python3 "$ROOT/tools/image_hash.py" --root "$ROOT" --context "$1" \
    | tar -C "$ROOT" -c --null --no-recursion -T - -f "$2" \
    || die "cannot pack the build context of $1"
}

src_pin() {  # src_pin <stack>: the D2_<PIN>_* source pin of the stack's Detectron2 commit, lowercase (empty: none)
  local up spec name commit_var
  up=$(echo "$1" | tr '[:lower:]' '[:upper:]')
  spec="STACK_${up}_DETECTRON2"
  for name in $(grep -oE '^D2_[A-Z0-9]+_COMMIT=' versions.env | sed -E 's/^D2_([A-Z0-9]+)_COMMIT=/\1/'); do
    commit_var="D2_${name}_COMMIT"
    [ "${!commit_var}" = "${!spec##*@}" ] && { echo "$name" | tr '[:upper:]' '[:lower:]'; return 0; }
  done
  return 0
}

src_sha() {  # src_sha <stack>: the pinned sha256 of that archive (empty: none)
  local pin sha_var
  pin=$(src_pin "$1")
  [ -n "$pin" ] || { echo ""; return 0; }
  sha_var="D2_$(echo "$pin" | tr '[:lower:]' '[:upper:]')_TAR_SHA256"
  echo "${!sha_var}"
}

parent_name() {  # parent_name <image>: NAME of the versions.env PARENT_<NAME> that is <image> (empty: none)
  local name var
  for name in $(grep -oE '^PARENT_[A-Z0-9]+=' versions.env | sed -E 's/^PARENT_([A-Z0-9]+)=/\1/'); do
    var="PARENT_$name"
    [ "${!var}" = "$1" ] && { echo "$name"; return 0; }
  done
  return 0
}

standin_key() {  # standin_key <suite>: what a stand-in was made from (rebuilt when it changes)
  echo "debootstrap --variant=minbase $1" | sha256sum | cut -c1-16
}

is_standin() {  # is_standin <image> <suite>: the local <image> is our stand-in made from <suite>
  [ "$(docker image inspect -f '{{index .Config.Labels "shelfdet.standin"}}' "$1" 2>/dev/null)" = "$(standin_key "$2")" ]
}

standin() {  # standin <image> <suite>: a debootstrap minbase of <suite>, imported as <image>
  local image=$1 suite=$2 key
  key=$(standin_key "$suite")
  command -v debootstrap >/dev/null 2>&1 || {
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
      || die "$image cannot be pulled, and its stand-in needs debootstrap, which this host lacks (and has no apt-get as root to install it): pull $image on a machine with registry access and \`docker save\`/\`docker load\` it here, or build remotely (BUILDER=codebuild)"
    say "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
  }
  local dir t0=$SECONDS
  dir=$(mktemp -d "${TMPDIR:-/tmp}/shelfdet-rootfs.XXXXXX")
  # Cleared once it ran: a RETURN trap stays set for the callers' returns too.
  trap 'rm -rf "$dir" "$dir.log"; trap - RETURN' RETURN
  say "debootstrap $suite minbase into $dir (about 1 min, once)"
  # The host's mirror when it names one (apt sources), else debootstrap's default.
  local mirror
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
           | awk '{print $2}' | grep -E '/debian/?$' | head -n 1 || true)
  local log="$dir.log"
  if ! debootstrap --variant=minbase "$suite" "$dir/root" ${mirror:+"$mirror"} >"$log" 2>&1; then
    tail -n 20 "$log" >&2; die "debootstrap failed (log: $log)"
  fi
  # As slim as the official image: no apt lists or caches, docs or man pages.
  rm -rf "$dir/root/var/cache/apt/archives/"*.deb "$dir/root/var/lib/apt/lists/"* \
         "$dir/root/usr/share/doc" "$dir/root/usr/share/man" "$dir/root/usr/share/info"
  say "debootstrap done in $((SECONDS - t0)) s ($(du -sh "$dir/root" | cut -f1)); docker import as $image"
  tar -C "$dir/root" -c . | docker import --platform "$PLATFORM" \
      -c 'ENV LANG=C.UTF-8' -c "LABEL shelfdet.standin=$key" -c 'CMD ["/bin/bash"]' \
      -m "stand-in for $image: debootstrap --variant=minbase $suite" - "$image" >/dev/null \
    || die "docker import of the $suite stand-in as $image failed"
}

parent() {  # parent <image>: present, pulled (linux/amd64), or a debootstrap stand-in under its name
  local image=$1 name suite="" suite_var err
  name=$(parent_name "$image")
  if [ -n "$name" ]; then suite_var="PARENT_${name}_ROOTFS_SUITE"; suite=${!suite_var:-}; fi
  if [ "$PARENT" = debootstrap ]; then
    [ -n "$suite" ] || die "PARENT=debootstrap: $image has no debootstrap stand-in (versions.env PARENT_*_ROOTFS_SUITE)"
    is_standin "$image" "$suite" && { say "parent $image: the debootstrap $suite stand-in (cached)"; return 0; }
    standin "$image" "$suite"; return 0
  fi
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  say "pulling $image ($PLATFORM)"
  if err=$(docker pull -q --platform "$PLATFORM" "$image" 2>&1 >/dev/null); then return 0; fi
  err=$(tail -n 1 <<<"$err")
  [ -n "$suite" ] || die "cannot pull $image (${err}), and it has no debootstrap stand-in: run \`make doctor STACK=<stack>\` for the alternatives, or build remotely (BUILDER=codebuild)"
  say "cannot pull $image (${err}): using a debootstrap $suite stand-in under its name (PARENT=debootstrap asks for this)"
  standin "$image" "$suite"
}

parents() {  # parents <stack>: every parent the stack's base image starts from, present
  local var image seen=" "
  for var in "$(stack_var "$1" BUILDER_IMAGE)" "$(stack_var "$1" RUNTIME_IMAGE)"; do
    image=${!var}
    [[ "$seen" == *" $image "* ]] && continue
    seen+="$image "
    ( lock "parent-${image//[^A-Za-z0-9.-]/_}"; parent "$image" ) || return 1
  done
}

emulation_note() {  # emulation_note <stack>: on an arm64 Docker host, compiling for amd64 is slow
  local arch force
  arch=$(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)
  case "$arch" in arm64|aarch64) ;; *) return 0 ;; esac
  force=$(stack_var "$1" DETECTRON2)
  [[ "${!force}" == git:* ]] || return 0
  say "NOTE: this Docker host is $arch: the $1 base image builds for $PLATFORM under emulation, and compiling Detectron2 there takes hours; BUILDER=codebuild builds it on AWS CodeBuild instead"
}

d2_source() {  # d2_source <stack>: the pinned Detectron2 archive into the build context (empty: clone instead)
  local pin
  pin=$(src_pin "$1")
  : >images/.build/detectron2-src.tar
  if [ -n "$pin" ] && bash tools/d2_source.sh check "$pin" >/dev/null; then
    cp "$(bash tools/d2_source.sh path "$pin")" images/.build/detectron2-src.tar
    say "Detectron2 from the pinned archive $(bash tools/d2_source.sh path "$pin")"
  fi
}

need_source() {  # need_source <stack>: a CPU twin without its archive stops here, in one line
  local pin force
  pin=$(src_pin "$1")
  force=$(stack_var "$1" FORCE_CUDA)
  [ -n "$pin" ] && [ "${!force}" != 1 ] || return 0
  bash tools/d2_source.sh check "$pin" >/dev/null && return 0
  # The twins exist for machines without GitHub (their parents have no git): no clone to fall back on.
  die "stack $1 needs $(bash tools/d2_source.sh path "$pin") (Detectron2 $(src_ref "$pin"), sha256-pinned): git clone https://github.com/facebookresearch/detectron2 /tmp/d2 && bash tools/d2_source.sh $pin /tmp/d2"
}

src_ref() {  # src_ref <pin>: its human name (tag or short commit)
  local ref_var
  ref_var="D2_$(echo "$1" | tr '[:lower:]' '[:upper:]')_REF"
  echo "${!ref_var}"
}

host_ca() {  # the host's CA bundle for pip in the builder stages (never in a final stage)
  mkdir -p images/.build
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt images/.build/host-ca.crt
  else
    : >images/.build/host-ca.crt
  fi
}

lock() {  # lock <name>: one build of a kind at a time (CI prebuilds in the background)
  exec {LOCK_FD}>"${TMPDIR:-/tmp}/shelfdet-images-$1.lock"
  if ! flock -n "$LOCK_FD"; then
    say "waiting for another build of $1 (e.g. .ci/run's prebuild) to finish"
    flock "$LOCK_FD"
  fi
}

parent_of() {  # parent_of <image> <stack>: the image of ours it starts FROM (empty: public parents only)
  slim "$2" && return 0
  case $1 in training|serving) echo base ;; test) echo training ;; esac
}

build() {  # build <image> <stack>
  local image=$1 stack=$2 tag t0=$SECONDS parent parent_tag
  [ "$image" = test ] && [ "$stack" != cpu ] && die "the test image exists for stack cpu only"
  check_pair "$image" "$stack"
  [ "$image" = base ] && need_source "$stack"
  # Everything the base's build fetches, checked in seconds before minutes of building (SHELFDET_PREFLIGHT=0 skips).
  if [ "$image" = base ]; then PYTHONPATH="$ROOT/shared" python3 -m shelfdet.commands.preflight "$stack" || return 1; fi
  parent=$(parent_of "$image" "$stack")
  if [ "$parent" = base ] && [ -n "$BASE_IMAGE" ]; then  # a base pushed earlier: never rebuilt here
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
      say "pulling $BASE_IMAGE ($PLATFORM)"
      docker pull -q --platform "$PLATFORM" "$BASE_IMAGE" >/dev/null \
        || die "cannot pull BASE_IMAGE=$BASE_IMAGE (an ECR image needs \`aws ecr get-login-password | docker login\`; make push-training logs in itself)"
    fi
    parent=
  fi
  if [ -n "$parent" ]; then  # FROM a tag of ours: built first when missing (e.g. after an edit to shared/)
    parent_tag=$(name "$parent" "$stack")
    SHELFDET_IMAGE_NAMES="${SHELFDET_IMAGE_NAMES:-} $parent_tag"  # one name for it in this build, even if a file changes
    if ! docker image inspect "$parent_tag" >/dev/null 2>&1; then
      say "$parent_tag is not built: building it first"
      ( build "$parent" "$stack" >/dev/null ) || return 1
    fi
  fi
  lock "$image-$stack"
  host_ca
  if [ "$image" = base ]; then parents "$stack" || return 1; d2_source "$stack"; emulation_note "$stack"; fi
  if slim "$stack"; then parents "$stack" || return 1; fi
  check_locks "$image" "$stack"
  tag=$(name "$image" "$stack")
  local -a args=()
  while IFS= read -r kv; do args+=(--build-arg "$kv"); done < <(buildargs "$image" "$stack")
  local -a net=()
  # With the vfs/no-bridge daemon, build containers need the host's network.
  [ "$(bash tools/docker_daemon.sh mode 2>/dev/null)" = "vfs, no bridge" ] && net=(--network host)
  # The context is a tar of exactly the files the image is made of, never the folder: nothing
  # untracked or ignored (.venv, runs/, data/, sources/, a stray file) reaches the daemon.
  local ctx
  ctx=$(mktemp "${TMPDIR:-/tmp}/shelfdet-context.XXXXXX")
  context "$(dockerdir "$image" "$stack")" "$ctx"
  say "building $tag (stack $stack)"
  if ! docker build "${net[@]}" --platform "$PLATFORM" -f "images/$(dockerdir "$image" "$stack")/Dockerfile" -t "$tag" \
      --label "shelfdet.stack=$stack" \
      ${PARENT:+--label "shelfdet.parent=$PARENT"} ${NO_CACHE:+--no-cache} \
      "${args[@]}" - <"$ctx" >&2; then
    rm -f "$ctx"; die "docker build of $tag failed (output above)"
  fi
  rm -f "$ctx"
  say "built $tag in $((SECONDS - t0)) s"
  echo "$tag"
}

case "${1:-}" in
  build) [ $# -eq 3 ] || die "usage: $0 build <image> <stack>"; check_image "$2"; check_stack "$3"; check_parent "$3"
         build "$2" "$3" ;;
  tags) [ $# -eq 2 ] || die "usage: $0 tags <stack>"; check_stack "$2"; check_parent "$2"
        for i in base training serving; do
          slim "$2" && [ "$i" != serving ] && continue
          n=$(name "$i" "$2"); echo "$n"
          SHELFDET_IMAGE_NAMES="${SHELFDET_IMAGE_NAMES:-} $n"  # the base's hash once, not three times
        done ;;
  name) [ $# -eq 3 ] || die "usage: $0 name <image> <stack>"; check_image "$2"; check_stack "$3"; check_parent "$3"; check_pair "$2" "$3"
        name "$2" "$3" ;;
  hash) [ $# -eq 3 ] || die "usage: $0 hash <image> <stack>"; check_image "$2"; check_stack "$3"; check_parent "$3"; check_pair "$2" "$3"
        content_hash "$2" "$3" ;;
  buildargs) check_image "$2"; check_stack "$3"; check_parent "$3"; check_pair "$2" "$3"; buildargs "$2" "$3" ;;
  context) [ $# -eq 3 ] || die "usage: $0 context <image> <stack>"; check_image "$2"; check_stack "$3"; check_pair "$2" "$3"
           python3 "$ROOT/tools/image_hash.py" --root "$ROOT" --context "$(dockerdir "$2" "$3")" | tr '\0' '\n' ;;
  parents) [ $# -eq 2 ] || die "usage: $0 parents <stack>"; check_stack "$2"; check_parent "$2"; parents "$2" ;;
  prebuild) check_stack "$2"; check_parent "$2"
        for i in base training serving $([ "$2" = cpu ] && echo test); do
          slim "$2" && [ "$i" != serving ] && continue
          ( build "$i" "$2" >/dev/null ) || exit 1
        done ;;
  *) die "usage: $0 build|tags|name|hash|buildargs|context|parents|prebuild ..." ;;
esac
