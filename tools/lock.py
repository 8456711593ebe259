#!/usr/bin/env python3
"""`make lock`: one lock file per pip install of the images, locks/<name>.txt, from versions.env.

  python tools/lock.py [NAME ...]     # write the locks whose inputs changed (named ones: those, always)
  python tools/lock.py --all          # write every lock again (newer releases of unpinned dependencies)
  python tools/lock.py --check        # exit 1, naming each stale lock, when versions.env moved on
  python tools/lock.py --stale NAME   # the versions.env keys changed since locks/NAME.txt (tools/images.sh)

A lock lists every distribution that pip installs there, transitive ones included, one line
each: `name==version --hash=sha256:... ...`, with the sha256 of every file PyPI serves for that
version (pip picks the wheel that fits, or the sdist, and refuses any other bytes under
--require-hashes). The resolution is uv's (`uv pip compile --generate-hashes`), for the
stack's Python and the glibc of its parent (STACK_<NAME>_LOCK_TARGET), from PyPI alone: the
machine's own pip configuration (find-links, extra indexes) never reaches a lock.

Each lock starts with the versions.env values it was made from (`# input KEY=VALUE`):
tests/test_locks.py and tools/images.sh compare them with versions.env, so a pin changed
without `make lock` stops the build and fails the suite instead of being skipped.

Special cases, said in the lock itself:
- cpu: the venv sees Debian's python3-* packages (STACK_CPU_SYSTEM_PYTHON): the resolution
  takes them as they are and the lock leaves them out (apt installs them, checked by its
  signed index; install.sh checks the venv sees exactly these versions).
- cu101: torch and torchvision are wheels on PyTorch's own index, which this machine cannot
  reach. They are resolved as PyPI's torch 1.6.0/torchvision 0.7.0 (same requirements) and
  written as the pinned URL with the sha256 from STACK_CU101_TORCH_SHA256 (the `#sha256=` of
  the wheel's link in PyTorch's index). Where that pin is empty the line is the URL alone and
  the lock says so (`# from PyTorch's index at build time:`): the build reads that `#sha256=`
  from the index and writes it into the line before pip runs (images/base/install.sh deps).
- test: the test image's additions over the cpu training image (TEST_REQUIREMENTS); the
  MLflow server's own venv is mlflow-server.
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCKS = os.path.join(ROOT, "locks")
INDEX = "https://pypi.org/simple"
STACKS = ("cpu", "cu101", "cu101cpu", "cu12", "cpu-slim")
NAMES = STACKS + ("test", "mlflow-server")


class LockError(RuntimeError):
    pass


def read_versions(path=None):
    values = {}
    with open(path or os.path.join(ROOT, "versions.env")) as f:
        for line in f:
            m = re.match(r"^([A-Z0-9_]+)=(.*)$", line.rstrip("\n"))
            if m:
                values[m.group(1)] = m.group(2)
    return values


def stack_prefix(stack):
    """cpu-slim -> STACK_CPU_SLIM_: the prefix of a stack's keys in versions.env."""
    return "STACK_" + stack.upper().replace("-", "_") + "_"


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req):
    return canonical(re.split(r"[\[=<>!~ @;]", req.strip(), 1)[0])


def inputs(name, v):
    """The versions.env keys a lock is made from, in order (their values go into its header)."""
    if name in STACKS:
        up = stack_prefix(name)
        keys = ["PIP_PIN", up + "LOCK_TARGET", up + "TORCH_PIP", up + "CUDA_PIP", up + "REQUIREMENTS"]
        if name == "cpu":
            keys.append(up + "SYSTEM_PYTHON")
        if up + "TORCH_SHA256" in v:
            keys.append(up + "TORCH_SHA256")
        return keys
    if name == "test":
        return ["STACK_CPU_LOCK_TARGET", "TEST_REQUIREMENTS"] + inputs("cpu", v)
    if name == "mlflow-server":
        return ["STACK_CPU_LOCK_TARGET", "MLFLOW_SERVER_REQUIREMENTS"]
    raise LockError("unknown lock '{}' (one of: {})".format(name, ", ".join(NAMES)))


def header_inputs(name, v):
    missing = [k for k in inputs(name, v) if k not in v]
    if missing:
        raise LockError("versions.env has no {} (needed by locks/{}.txt)".format(", ".join(missing), name))
    return ["# input {}={}".format(k, v[k]) for k in inputs(name, v)]


def changed_keys(name, v, root=ROOT):
    """The versions.env keys whose values differ from those locks/<name>.txt was made from ([]: none)."""
    with open(os.path.join(root, "locks", name + ".txt")) as f:
        have = dict(l.rstrip("\n")[len("# input "):].split("=", 1) for l in f if l.startswith("# input "))
    want = {k: v.get(k) for k in inputs(name, v)}
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


def stale(name, v, root=ROOT):
    """Why locks/<name>.txt does not match versions.env (None: it does)."""
    if not os.path.isfile(os.path.join(root, "locks", name + ".txt")):
        return "locks/{}.txt is missing".format(name)
    keys = changed_keys(name, v, root)
    if not keys:
        return None
    return "locks/{}.txt is stale: {} changed in versions.env since it was made".format(name, ", ".join(keys))


def wheel_version(url):
    """torch-1.6.0%2Bcu101-cp38-... -> (torch, 1.6.0)"""
    filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
    m = re.match(r"^([A-Za-z0-9_.]+)-([0-9][^-+]*)", filename)
    if not m:
        raise LockError("cannot read a name and version from the wheel URL {}".format(url))
    return canonical(m.group(1)), m.group(2)


def uv_command():
    here = os.path.dirname(sys.executable)
    for candidate in (os.path.join(here, "uv"), shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    raise LockError("uv not found beside {} or on PATH: `make setup` installs it (versions.env LOCAL_REQUIREMENTS)"
                    .format(sys.executable))


def compile_hashed(requirements, target, constraints=()):
    """{name: (version, [sha256 ...])} for the full resolution of the requirements."""
    python, platform = target.split()
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.join(tmp, "requirements.in")
        with open(req, "w") as f:
            f.write("\n".join(requirements) + "\n")
        cmd = uv_command() + ["pip", "compile", req, "--python-version", python, "--python-platform", platform,
                              "--generate-hashes", "--no-header", "--no-annotate", "--no-config",
                              "--index-url", INDEX, "--quiet"]
        if constraints:
            con = os.path.join(tmp, "constraints.txt")
            with open(con, "w") as f:
                f.write("\n".join(constraints) + "\n")
            cmd += ["--constraint", con]
        env = {k: val for k, val in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        last = [l for l in out.stderr.strip().splitlines() if l.strip()]
        raise LockError("uv pip compile failed for {}: {}".format(target, " ".join(last[-6:])))
    resolved, current = {}, None
    for line in out.stdout.splitlines():
        line = line.strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if m:
            current = canonical(re.sub(r"\[.*\]", "", m.group(1)))
            resolved[current] = (m.group(2), [])
            line = line[m.end():].strip()
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            resolved[current][1].append(h)
    return resolved


def entry(name, version, hashes):
    return "{}=={} {}".format(name, version, " ".join("--hash=sha256:" + h for h in sorted(hashes)))


def make(name, v):
    """The text of locks/<name>.txt."""
    notes, lines, unpinned = [], [], []
    if name in STACKS:
        up = stack_prefix(name)
        target = v[up + "LOCK_TARGET"]
        urls, wanted = [], []
        for req in v[up + "TORCH_PIP"].split():
            if "://" in req:
                urls.append(req)
                wanted.append("{}=={}".format(*wheel_version(req)))
            else:
                wanted.append(req)
        wanted += v[up + "CUDA_PIP"].split() + v[up + "REQUIREMENTS"].split() + v["PIP_PIN"].split()
        system = v.get(up + "SYSTEM_PYTHON", "").split()
        resolved = compile_hashed(wanted, target, constraints=system)
        for s in system:
            resolved.pop(req_name(s), None)
        if system:
            notes.append("# Left out (Debian's python3-* packages, installed by apt; the venv sees them): "
                         + " ".join(system))
        if name == "cpu" and "torch" in resolved:
            raise LockError("the cpu requirements pull in PyPI's torch: Debian's torch must stay the only one")
        shas = v.get(up + "TORCH_SHA256", "").split()
        for i, url in enumerate(urls):
            pkg, version = wheel_version(url)
            resolved.pop(pkg, None)
            if i < len(shas):
                lines.append("{} @ {} --hash=sha256:{}".format(pkg, url, shas[i]))
            else:
                unpinned.append(pkg)
                lines.append("{} @ {}".format(pkg, url))
        pinned = [wheel_version(u)[0] for u in urls[:len(shas)]]
        if pinned:
            notes.append("# {} from PyTorch's index (not reachable where locks are made): checked against "
                         "{}TORCH_SHA256, the sha256 that index publishes for each wheel".format(
                             " and ".join(pinned), up))
        if unpinned:
            notes.append("# from PyTorch's index at build time: {} (sha256 as the index publishes it; pin "
                         "{}TORCH_SHA256 to freeze it)".format(" ".join(unpinned), up))
    elif name == "test":
        cpu = read_lock(os.path.join(LOCKS, "cpu.txt"))
        system = v["STACK_CPU_SYSTEM_PYTHON"].split()
        pins = ["{}=={}".format(n, ver) for n, ver in cpu.items()] + system
        resolved = compile_hashed(v["TEST_REQUIREMENTS"].split(), v["STACK_CPU_LOCK_TARGET"], constraints=pins)
        for n in list(resolved):
            if n in cpu or n in {req_name(s) for s in system}:
                del resolved[n]
        notes.append("# On top of locks/cpu.txt (and Debian's packages there): only what the test tools add.")
    else:  # mlflow-server
        resolved = compile_hashed(v["MLFLOW_SERVER_REQUIREMENTS"].split(), v["STACK_CPU_LOCK_TARGET"])
    lines += [entry(n, ver, h) for n, (ver, h) in sorted(resolved.items())]
    missing = [n for n, (_, h) in resolved.items() if not h]
    if missing:
        raise LockError("no sha256 for {} in PyPI's index".format(", ".join(sorted(missing))))
    head = ["# locks/{}.txt: written by `make lock` (tools/lock.py) from versions.env; do not edit.".format(name),
            "# `pip install --require-hashes -r` this file installs these exact files and nothing else."]
    return "\n".join(head + header_inputs(name, v) + notes + sorted(lines, key=str.lower)) + "\n"


def read_lock(path):
    """{name: version} of a lock's `name==version` lines."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+) ", line)
            if m:
                out[canonical(m.group(1))] = m.group(2)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="locks to write (default: the stale ones of {})".format(" ".join(NAMES)))
    p.add_argument("--all", action="store_true", help="write every lock again")
    p.add_argument("--check", action="store_true", help="only say which locks are stale")
    p.add_argument("--stale", metavar="NAME", help="print the versions.env keys that changed since locks/NAME.txt")
    args = p.parse_args(argv)
    v = read_versions()
    names = args.names or list(NAMES)
    try:
        if args.stale:
            print(", ".join(changed_keys(args.stale, v)))
            return 0
        if args.check:
            problems = [s for s in (stale(n, v) for n in names) if s]
            for s in problems:
                print("error: {} (make lock)".format(s), file=sys.stderr)
            return 1 if problems else 0
        os.makedirs(LOCKS, exist_ok=True)
        if not args.names and not args.all:
            # A lock whose inputs did not change stays as it is: its transitive versions do not drift.
            names = [n for n in NAMES if stale(n, v)]
            if "cpu" in names and "test" not in names:
                names.append("test")  # made on top of cpu's
            if not names:
                print("[lock] every lock matches versions.env (--all makes them again)")
        # test's lock is made on top of cpu's: cpu first.
        for name in sorted(names, key=lambda n: n == "test"):
            text = make(name, v)
            path = os.path.join(LOCKS, name + ".txt")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            count = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
            print("[lock] locks/{}.txt: {} packages, sha256 {}".format(
                name, count, hashlib.sha256(text.encode()).hexdigest()[:12]))
    except LockError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
