"""The supply chain of the images: the lock files (`make lock`), the pinned CUDA downloads, and
build contexts and CodeBuild zips made of git-tracked files only."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_images_static import _calls, _parents_env, clean_env, copy_of_image_inputs, env_file, images_sh, tags_of

ROOT = Path(__file__).resolve().parents[1]
HASH = r"--hash=sha256:[0-9a-f]{64}"


def lock_module():
    spec = importlib.util.spec_from_file_location("shelfdet_lock", str(ROOT / "tools" / "lock.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lock_lines(name):
    return [l for l in (ROOT / "locks" / (name + ".txt")).read_text().splitlines() if l and not l.startswith("#")]


@pytest.mark.parametrize("name", lock_module().NAMES)
def test_each_lock_was_made_from_the_pins_in_versions_env(name):
    assert lock_module().stale(name, env_file()) is None, "versions.env changed: run `make lock` and commit locks/"


@pytest.mark.parametrize("name", lock_module().NAMES)
def test_every_locked_distribution_is_pinned_by_sha256(name):
    lines = lock_lines(name)
    assert len(lines) > 10, name
    at_build = [l for l in (ROOT / "locks" / (name + ".txt")).read_text().splitlines()
                if l.startswith("# from PyTorch's index at build time:")]
    for line in lines:
        if re.match(r"^[a-z0-9-]+ @ https://\S+$", line):  # its sha256 from the index, at build time: said so
            assert at_build and line.split()[0] in at_build[0].split(), line
            continue
        assert re.match(r"^[a-z0-9-]+(==\S+| @ https://\S+)( {})+$".format(HASH), line), line


def requirement(pin):
    name, _, version = pin.partition("==")
    return re.sub(r"\[.*\]", "", re.sub(r"[-_.]+", "-", name).lower()), version


@pytest.mark.parametrize("stack", ("cpu", "cu101", "cu101cpu", "cu12", "cpu-slim"))
def test_each_stack_lock_holds_its_pins_at_their_versions(stack):
    pins = env_file()
    up = "STACK_{}_".format(stack.upper().replace("-", "_"))
    locked = dict(requirement(l.split()[0]) for l in lock_lines(stack) if "==" in l.split()[0])
    wanted = pins[up + "REQUIREMENTS"].split() + pins["PIP_PIN"].split() + pins[up + "CUDA_PIP"].split()
    wanted += [p for p in pins[up + "TORCH_PIP"].split() if "://" not in p]
    for pin in wanted:
        name, version = requirement(pin)
        assert locked.get(name) == version, (stack, pin)
    system = [requirement(p)[0] for p in pins.get(up + "SYSTEM_PYTHON", "").split()]
    assert not set(system) & set(locked), "Debian's packages stay out of the lock"
    if stack == "cpu":
        assert "torch" not in locked and "numpy" not in locked, "cpu keeps Debian's torch and numpy"
    for url in pins[up + "TORCH_PIP"].split():
        if "://" in url:
            assert any(l.split()[:3] == [l.split()[0], "@", url] for l in lock_lines(stack)), url


def test_slim_lock_has_the_runtimes_and_nothing_of_the_eager_stack():
    slim = {l.split("==")[0] for l in lock_lines("cpu-slim")}
    assert {"openvino", "onnxruntime", "numpy", "pillow", "fastapi", "uvicorn"} <= slim
    assert not slim & {"torch", "torchvision", "detectron2", "pycocotools", "opencv-python-headless", "fvcore"}


def test_test_lock_adds_only_what_the_cpu_image_lacks():
    cpu = {l.split("==")[0] for l in lock_lines("cpu")}
    test = {l.split("==")[0] for l in lock_lines("test")}
    assert not cpu & test
    assert {"pytest", "moto", "httpx", "vermin"} <= test


def copy_with_locks(dest: Path) -> Path:
    return copy_of_image_inputs(dest)  # locks/ and tools/lock.py are image inputs


def build_base(repo: Path, tmp_path: Path, stack: str, registry) -> subprocess.CompletedProcess:
    env = _parents_env(tmp_path, registry=registry)
    return subprocess.run(["bash", str(repo / "tools" / "images.sh"), "build", "base", stack], capture_output=True,
                          text=True, cwd=repo, env=clean_env(**env))


def test_a_pin_changed_without_make_lock_stops_the_build_in_one_line(tmp_path):
    repo = copy_with_locks(tmp_path / "repo")
    versions = repo / "versions.env"
    text = versions.read_text()
    versions.write_text(re.sub(r"^(STACK_CPU_REQUIREMENTS=.*)$", r"\1 six==1.16.0", text, flags=re.M))
    out = build_base(repo, tmp_path, "cpu", ["debian:bookworm-slim"])
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr
    assert errors[0] == "error: locks/cpu.txt is stale: STACK_CPU_REQUIREMENTS changed in versions.env since " \
                        "it was made (make lock)", errors
    assert not _calls(tmp_path, "build"), "stopped before docker build"
    assert lock_module().stale("cu12", {**env_file(), "STACK_CPU_REQUIREMENTS": "six==1.16.0"}) is None, \
        "another stack's pin leaves a lock as it is"
    versions.write_text(text)
    (tmp_path / "docker.log").unlink()
    out = build_base(repo, tmp_path, "cpu", ["debian:bookworm-slim"])
    assert out.returncode == 0, out.stderr
    assert len(_calls(tmp_path, "build")) == 1
    assert (repo / "images" / ".build" / "lock-cpu.txt").read_bytes() == (ROOT / "locks" / "cpu.txt").read_bytes()


def test_a_lock_change_changes_the_tag():
    lock = lock_module()
    args = dict(line.split("=", 1) for line in images_sh("buildargs", "base", "cpu").splitlines())
    import hashlib
    assert args["LOCK_SHA256"] == hashlib.sha256((ROOT / "locks" / "cpu.txt").read_bytes()).hexdigest()
    test_args = dict(line.split("=", 1) for line in images_sh("buildargs", "test", "cpu").splitlines())
    both = (ROOT / "locks" / "test.txt").read_bytes() + (ROOT / "locks" / "mlflow-server.txt").read_bytes()
    assert test_args["TEST_LOCK_SHA256"] == hashlib.sha256(both).hexdigest()
    assert lock.NAMES == ("cpu", "cu101", "cu101cpu", "cu12", "cpu-slim", "test", "mlflow-server")
    slim = dict(line.split("=", 1) for line in images_sh("buildargs", "serving", "cpu-slim").splitlines())
    assert slim["LOCK_SHA256"] == hashlib.sha256((ROOT / "locks" / "cpu-slim.txt").read_bytes()).hexdigest()


def test_a_wheel_without_a_pinned_sha256_does_not_stop_the_build(tmp_path):
    pins = env_file()
    if pins["STACK_CU101_TORCH_SHA256"]:
        pytest.skip("torch's sha256 is pinned for cu101")
    lock = (ROOT / "locks" / "cu101.txt").read_text()
    assert "# from PyTorch's index at build time: torch torchvision (" in lock
    repo = copy_with_locks(tmp_path / "repo")
    out = build_base(repo, tmp_path, "cu101", ["ubuntu:18.04"])
    assert not [l for l in out.stderr.splitlines() if l.startswith("error: ") and "lock" in l], out.stderr
    assert (repo / "images" / ".build" / "lock-cu101.txt").read_text() == lock, "the lock goes into the context"


# Where curl is missing (the test image), file:// downloads as `curl -fsSL --retry 3 -o FILE URL` makes them.
FILE_CURL = """#!/bin/sh
for a in "$@"; do [ "$prev" = -o ] && out=$a; prev=$a; url=$a; done
exec cp "${url#file://}" "$out"
"""


def install_sh(tmp_path: Path, step: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"]
    if shutil.which("curl") is None:
        (tmp_path / "bin").mkdir(exist_ok=True)
        (tmp_path / "bin" / "curl").write_text(FILE_CURL)
        (tmp_path / "bin" / "curl").chmod(0o755)
        path = "{}:{}".format(tmp_path / "bin", path)
    return subprocess.run(["bash", str(ROOT / "images" / "base" / "install.sh"), step] + list(args), capture_output=True,
                          text=True, cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path), PATH=path, **env),
                          timeout=120)


def test_a_cuda_download_that_does_not_match_its_pin_stops_the_build(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cuda-keyring_1.0-1_all.deb").write_bytes(b"not the keyring NVIDIA signed\n")
    runfile = tmp_path / "cuda.run"
    runfile.write_bytes(b"#!/bin/sh\ntouch " + str(tmp_path / "RAN").encode() + b"\n")
    wrong = "0" * 64
    apt = "file://{} cuda-keyring_1.0-1_all.deb cuda-minimal-build-10-1=10.1.243-1".format(repo)
    out = install_sh(tmp_path, "cuda", CUDA_APT=apt, CUDA_KEYRING_SHA256=wrong, CUDA_RUNFILE="file://" + str(runfile),
                     CUDA_RUNFILE_SHA256=wrong, FORCE_CUDA="1")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 3, out.stderr
    assert lines[-1].startswith("error: file://{}/cuda-keyring_1.0-1_all.deb has sha256 ".format(repo)), out.stderr
    assert lines[-1].endswith("not the one pinned in versions.env ({})".format(wrong)), out.stderr
    assert "falling back" not in out.stderr, "a mismatch is never a reason to try the runfile"
    # No keyring pin: the runfile, which is pinned; a wrong pin stops before it runs.
    out = install_sh(tmp_path, "cuda", CUDA_APT=apt, CUDA_KEYRING_SHA256="", CUDA_RUNFILE="file://" + str(runfile),
                     CUDA_RUNFILE_SHA256=wrong, FORCE_CUDA="1")
    assert out.returncode == 3 and "the pinned runfile instead of NVIDIA's apt repository" in out.stdout, out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith("error: file://{} has sha256 ".format(runfile))
    assert not (tmp_path / "RAN").exists() and not Path("/tmp/cuda.run").exists()
    out = install_sh(tmp_path, "cuda", CUDA_APT=apt, CUDA_KEYRING_SHA256="", CUDA_RUNFILE="file://" + str(runfile),
                     CUDA_RUNFILE_SHA256="", FORCE_CUDA="1")
    assert out.returncode == 3 and out.stderr.strip().splitlines()[-1] == (
        "error: file://{} has no sha256 pinned in versions.env (STACK_<STACK>_CUDA_RUNFILE_SHA256)".format(runfile))


def tiny_wheel(path: Path, name: str, version: str) -> bytes:
    """A real wheel of one empty module, installable anywhere (py3-none-any)."""
    import base64
    import hashlib
    import io
    import zipfile
    info = "{}-{}.dist-info".format(name, version)
    files = {name + "/__init__.py": b"",
             info + "/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version).encode(),
             info + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join("{},sha256={},{}\n".format(
        n, base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode(), len(b)) for n, b in files.items())
    files[info + "/RECORD"] = (record + info + "/RECORD,,\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def index_server(tmp_path):
    """PyTorch's index as files served over HTTP on 127.0.0.1: /whl/cu101/<wheel> and /whl/cu101/torch/."""
    import functools
    import http.server
    import threading
    root = tmp_path / "www"
    (root / "whl" / "cu101" / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, "http://127.0.0.1:{}".format(server.server_address[1])
    server.shutdown()
    server.server_close()


NO_PROXY = dict(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def pip_install(tmp_path: Path, lock: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(NO_PROXY, PIP_CONFIG_FILE=os.devnull)
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir",
                           "--no-index", "--require-hashes", "--no-deps", "--target", str(tmp_path / "site"),
                           "-r", str(lock)], capture_output=True, text=True, env=env, timeout=300)


def test_a_wheel_without_a_pinned_sha256_is_checked_by_the_one_its_index_publishes(tmp_path, index_server):
    www, base = index_server
    filename = "torch-1.6.0+cu101-py3-none-any.whl"
    wheel = tiny_wheel(www / "whl" / "cu101" / filename, "torch", "1.6.0+cu101")
    import hashlib
    sha = hashlib.sha256(wheel).hexdigest()
    quoted = filename.replace("+", "%2B")
    url = "{}/whl/cu101/{}".format(base, quoted)
    page = www / "whl" / "cu101" / "torch" / "index.html"
    page.write_text('<html><body>\n<a href="/whl/cu101/torch-1.5.0%2Bcu101-py3-none-any.whl#sha256={}">x</a><br>\n'
                    '<a href="/whl/cu101/{}#sha256={}">{}</a><br>\n</body></html>\n'.format("1" * 64, quoted, sha,
                                                                                          filename))
    head = "# from PyTorch's index at build time: torch (sha256 as the index publishes it)\n"
    other = "six==1.16.0 --hash=sha256:" + "2" * 64 + "\n"
    lock = tmp_path / "lock.txt"
    lock.write_text(head + other + "torch @ {}\n".format(url))
    # (a) the published sha256 goes into the lock line, said in one line, and pip installs those bytes.
    out = install_sh(tmp_path, "index-hashes", str(lock), **NO_PROXY)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[base] {}: sha256 {}, taken from {}/whl/cu101/torch/".format(
        filename, sha, base)], out.stdout
    assert lock.read_text() == head + other + "torch @ {} --hash=sha256:{}\n".format(url, sha)
    only_torch = tmp_path / "torch-lock.txt"
    only_torch.write_text(lock.read_text().replace(other, ""))
    installed = pip_install(tmp_path, only_torch)
    assert installed.returncode == 0, installed.stderr
    assert (tmp_path / "site" / "torch" / "__init__.py").is_file()
    # (c) other bytes at that URL: pip refuses them.
    shutil.rmtree(str(tmp_path / "site"))
    tiny_wheel(www / "whl" / "cu101" / filename, "torch", "1.6.0+cu101.post1")
    refused = pip_install(tmp_path, only_torch)
    assert refused.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr
    assert sha in refused.stderr and not (tmp_path / "site" / "torch").exists()
    # (b) an index without that file, a link without sha256, no index at all: one line each, lock untouched.
    fix = "pin STACK_<STACK>_TORCH_SHA256 in versions.env, then make lock"
    unresolved = head + "torch @ {}\n".format(url)
    for text, error in (
            ('<a href="/whl/cu101/torch-1.5.0%2Bcu101-py3-none-any.whl#sha256={}">x</a>'.format("1" * 64),
             "error: {}/whl/cu101/torch/ publishes no sha256 for {}: {}".format(base, filename, fix)),
            ('<a href="/whl/cu101/{}">{}</a>'.format(quoted, filename),
             "error: {}/whl/cu101/torch/ publishes no sha256 for {}: {}".format(base, filename, fix)),
            (None, "error: cannot read {}/whl/cu101/torch/ for the sha256 of {} (HTTP Error 404: File not found): {}"
             .format(base, filename, fix))):
        if text is None:
            shutil.rmtree(str(www / "whl" / "cu101" / "torch"))
        else:
            page.write_text("<html><body>{}</body></html>\n".format(text))
        lock.write_text(unresolved)
        out = install_sh(tmp_path, "index-hashes", str(lock), **NO_PROXY)
        assert out.returncode == 3 and out.stderr.strip().splitlines() == [error], out.stderr
        assert lock.read_text() == unresolved


def test_deps_takes_the_index_sha256_before_pip_runs():
    deps = (ROOT / "images" / "base" / "install.sh").read_text().split("\ndeps)\n", 1)[1].split("\n  ;;\n", 1)[0]
    assert deps.index("index_hashes /tmp/venv-lock.txt") < deps.index("--require-hashes --no-build-isolation")


def test_cu101_pins_the_cuda_runfile():
    pins = env_file()
    assert re.match(r"^[0-9a-f]{64}$", pins["STACK_CU101_CUDA_RUNFILE_SHA256"])
    assert dict(l.split("=", 1) for l in images_sh("buildargs", "base", "cu101").splitlines())[
        "CUDA_RUNFILE_SHA256"] == pins["STACK_CU101_CUDA_RUNFILE_SHA256"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo)] + list(args), capture_output=True, text=True, check=True,
                          env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")).stdout


JUNK = (".venv/bin/python", "runs/run-1/model/model_final.pth", "data/training/img_1.jpg", "sources/detectron2-x.tar",
        "=70,", "notes.txt", "shared/shelfdet/scratch.py", "images/base/extra.sh", "shared/shelfdet.egg-info/PKG-INFO")


def git_repo_with_junk(dest: Path) -> Path:
    """A git work tree of the image inputs (all tracked), then untracked and ignored junk beside them."""
    repo = copy_with_locks(dest)
    shutil.copy2(str(ROOT / ".gitignore"), str(repo / ".gitignore"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "inputs")
    for rel in JUNK:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("not for the image\n")
    return repo


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed here")
def test_the_build_context_holds_only_tracked_files(tmp_path):
    repo = git_repo_with_junk(tmp_path / "repo")
    tracked = set(git(repo, "ls-files").split())
    before = tags_of(repo)
    assert not (ROOT / "=70,").exists() and "=70," not in subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split("\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A docker that keeps the context it is sent (stdin) for each build.
    (bin_dir / "docker").write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$*\" >>\"$FAKE_STATE/docker.log\"\n"
                                    "case \"$1\" in image) exit 1 ;; pull) exit 0 ;; build) n=$(ls \"$FAKE_STATE\" "
                                    "| grep -c '^ctx'); cat >\"$FAKE_STATE/ctx$n.tar\" ;; esac\n")
    (bin_dir / "docker").chmod(0o755)
    env = dict(PATH="{}:{}".format(bin_dir, os.environ["PATH"]), FAKE_STATE=str(tmp_path), TMPDIR=str(tmp_path))
    for image in ("base", "training", "serving", "test"):
        for old in tmp_path.glob("ctx*.tar"):
            old.unlink()
        images_sh("build", image, "cpu", root=repo, **env)
        sent = sorted(tmp_path.glob("ctx*.tar"))[-1]
        with tarfile.open(str(sent)) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile())
        listed = images_sh("context", image, "cpu", root=repo).split()
        assert names == sorted(listed), image
        outside = [n for n in names if n not in tracked and not n.startswith("images/.build/")]
        assert not outside, (image, outside)
        assert "images/base/Dockerfile" in names or image != "base"
    assert tags_of(repo) == before, "untracked files are in no image and in no tag"
    git(repo, "add", "shared/shelfdet/scratch.py")
    assert tags_of(repo)["base"] != before["base"], "a staged file is part of the image"
    assert "shared/shelfdet/scratch.py" in images_sh("context", "base", "cpu", root=repo).split()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed here")
def test_the_codebuild_zip_holds_only_tracked_files(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "shared"))
    from shelfdet.images import codebuild

    repo = git_repo_with_junk(tmp_path / "repo")
    for rel in ("Makefile", "tools/setup_venv.sh"):
        shutil.copy2(str(ROOT / rel), str(repo / rel))
    git(repo, "add", "Makefile", "tools/setup_venv.sh")
    files = codebuild.context_files(repo)
    tracked = set(git(repo, "ls-files").split())
    assert set(files) <= tracked and "Makefile" in files and "locks/cpu.txt" in files
    assert not [f for f in files if f in JUNK or f.split("/")[0] in (".venv", "runs", "data", "sources")]
