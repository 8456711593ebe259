"""Preflight of an image build: is every external part a stack's base image fetches reachable?

    PYTHONPATH=shared python3 -m shelfdet.commands.preflight <stack>   # make build-base runs this first

The parts come from versions.env (SHELFDET_VERSIONS_ENV overrides, as for image_names.py): the
parent images, the apt repositories, the CUDA compiler's sources, the torch wheels and
package index, and the Detectron2 source. All are checked at once, each with a short
timeout, so a host that reaches nothing learns it in seconds, not after an hour of
building. A missing part stops with one line naming it and what else would work;
SHELFDET_PREFLIGHT=0 skips the whole check. When the stack's base image is already
built (its content-hash tag is in Docker), nothing is fetched and nothing is checked.
`make doctor` (shelfdet.commands.doctor) shows the same checks as a table.

Standard library only: it runs before any virtual environment exists.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from shelfdet.launch import image_names

TIMEOUT = 4.0  # seconds per connect or read: SHELFDET_PREFLIGHT_TIMEOUT or --timeout changes it
DEFAULT_INDEX = "https://pypi.org/simple"
DEFAULT_DEBIAN = "http://deb.debian.org/debian"
CODEBUILD = "BUILDER=codebuild (make push-* builds on AWS CodeBuild)"
# Which SageMaker GPU families a compute capability serves: V100, T4, A100, A10G, L4, H100.
ARCH_INSTANCES = (("7.0", "ml.p3"), ("7.5", "ml.g4dn"), ("8.0", "ml.p4d"), ("8.6", "ml.g5"), ("8.9", "ml.g6"),
                  ("9.0", "ml.p5"))

OK, WARN, ERROR, SKIP = "ok", "warn", "error", "skip"


class Result(NamedTuple):
    level: str
    status: str
    detail: str
    failure: str = ""  # an error's phrase in the one-line message
    note: str = ""  # said on success too (a stand-in, a fallback)


def ok(detail: str, status: str = "ok", note: str = "") -> Result:
    return Result(OK, status, detail, note=note)


def warn(detail: str, status: str = "warn", note: str = "") -> Result:
    return Result(WARN, status, detail, note=note or detail)


def fail(detail: str, failure: str, status: str = "FAIL") -> Result:
    return Result(ERROR, status, detail, failure=failure)


class Check:
    """One external part; ``run`` returns its Result within ``limit`` seconds or is reported as silent."""

    def __init__(self, key: str, part: str, what: str, run: Callable[[], Result], limit: float) -> None:
        self.key, self.part, self.what, self.run, self.limit = key, part, what, run, limit
        self.stacks = []  # type: List[str]
        self.result = None  # type: Optional[Result]
        self._out = None  # type: Optional[Result]

    def _target(self) -> None:
        try:
            self._out = self.run()
        except Exception as err:  # one line for the user, never a traceback
            self._out = fail("{}: {}".format(type(err).__name__, err),
                             "{} {}: {}: {}".format(self.part, self.what, type(err).__name__, err))


def run_checks(checks: Sequence[Check], first: Optional[Check] = None,
               stop: Callable[[Result], bool] = lambda r: False) -> bool:
    """Runs every check in its own thread. ``first`` is awaited first; when ``stop`` says so of its
    result, the rest are abandoned (daemon threads) and False is returned."""
    start = time.monotonic()
    threads = []
    for check in checks:
        thread = threading.Thread(target=check._target, name="preflight " + check.key, daemon=True)
        thread.start()
        threads.append((check, thread))
    threads.sort(key=lambda ct: ct[0] is not first)
    for check, thread in threads:
        # The deadline, not the check's own timeouts, bounds the wait: a DNS lookup has none.
        thread.join(max(0.0, start + check.limit - time.monotonic()))
        out = check._out
        check.result = out if out is not None else fail(
            "no answer in {:g} s".format(check.limit),
            "{} {} gave no answer in {:g} s".format(check.part, check.what, check.limit))
        if check is first and stop(check.result):
            return False
    return True


# ---- probes ----------------------------------------------------------------------------

def _why(err: BaseException, timeout: float) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return "HTTP {}".format(err.code)
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.timeout) or isinstance(reason, TimeoutError):
        return "no answer in {:g} s".format(timeout)
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host ({})".format(reason.strerror or reason)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__


def _credentials(url: str) -> Tuple[str, Dict[str, str]]:
    """The URL without user:password@ (urllib cannot connect to it) and its Basic header."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    auth, _, host = parts.netloc.rpartition("@")
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    token = base64.b64encode(urllib.parse.unquote(auth).encode()).decode()
    return clean, {"Authorization": "Basic " + token}


def shown(url: str) -> str:
    return _credentials(url)[0]


def probe(url: str, timeout: float) -> Optional[str]:
    """None when the URL answers below 400 (a HEAD; a one-byte GET where HEAD is refused), else why not.
    Proxies come from HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as urllib reads them."""
    clean, headers = _credentials(url)
    headers["User-Agent"] = "shelfdet-preflight"
    for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        request = urllib.request.Request(clean, method=method, headers=dict(headers, **extra))
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as err:
            if method == "HEAD" and err.code in (403, 405, 501):
                continue  # some hosts (signed S3 redirects) answer HEAD differently from GET
            return _why(err, timeout)
        except (urllib.error.URLError, OSError) as err:
            return _why(err, timeout)
        except Exception as err:  # http.client's protocol errors
            return "{}: {}".format(type(err).__name__, err)
    return "HTTP 403"


def docker(args: Sequence[str], timeout: float) -> Tuple[int, str]:
    """(exit status, last line of its output); 127 when there is no docker, 124 on timeout.
    Plain `docker` from PATH, as tools/images.sh runs it."""
    try:
        out = subprocess.run(["docker"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=max(0.1, timeout))
    except FileNotFoundError:
        return 127, "docker is not installed"
    except subprocess.TimeoutExpired:
        return 124, "no answer in {:g} s".format(timeout)
    lines = [l.strip() for l in (out.stderr + "\n" + out.stdout if out.returncode else out.stdout).splitlines()
             if l.strip()]
    last = lines[-1] if lines else "exit {}".format(out.returncode)
    last = re.sub(r"^(error|Error response from daemon|Error):\s*", "", last)
    if len(last) > 100 and last.count(": ") >= 2:
        last = ": ".join(last.split(": ")[-2:])  # registry errors nest a chain of causes; the last two say it
    return out.returncode, last


# ---- versions.env ---------------------------------------------------------------------

def all_stacks() -> Tuple[str, ...]:
    return tuple(image_names.STACKS) + tuple(image_names.TEST_STACKS)


def archs(value: str) -> List[str]:
    return [a.split("+")[0] for a in re.split(r"[;\s]+", value) if a]


def and_join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class Stack:
    """A stack's STACK_<STACK>_* values, with PARENT=<variant>'s STACK_<STACK>_<VARIANT>_* first
    (tools/images.sh stack_var)."""

    def __init__(self, name: str, versions: Dict[str, str], parent: str = "") -> None:
        self.name, self.versions, self.parent = name, versions, parent
        self.up = name.upper()
        self.variant = ""
        if parent and parent != "debootstrap":
            self.variant = "STACK_{}_{}_".format(self.up, parent.upper().replace("-", "_"))

    def has_variant(self) -> bool:
        return not self.variant or any(k.startswith(self.variant) for k in self.versions)

    def get(self, key: str) -> str:
        if self.variant and self.variant + key in self.versions:
            return self.versions[self.variant + key]
        return self.versions.get("STACK_{}_{}".format(self.up, key), "")

    def parents(self) -> List[str]:
        out = []  # type: List[str]
        for image in (self.get("BUILDER_IMAGE"), self.get("RUNTIME_IMAGE")):
            if image and image not in out:
                out.append(image)
        return out

    def archs(self) -> List[str]:
        return archs(self.get("TORCH_CUDA_ARCH_LIST"))

    def twin(self) -> bool:
        """A CPU twin of a GPU stack (FORCE_CUDA=0 with a git Detectron2): built where GitHub is not."""
        return self.get("FORCE_CUDA") != "1"


def parent_entry(versions: Dict[str, str], image: str) -> Tuple[str, str, str]:
    """(NAME, stand-in suite, apt Release URL) of the PARENT_<NAME> that is ``image`` (empty: none)."""
    for key, value in versions.items():
        m = re.match(r"^PARENT_([A-Z0-9]+)$", key)
        if m and value == image:
            name = m.group(1)
            return (name, versions.get("PARENT_{}_ROOTFS_SUITE".format(name), ""),
                    versions.get("PARENT_{}_APT_RELEASE".format(name), ""))
    return "", "", ""


def package_name(requirement: str) -> str:
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""


def index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def debootstrap_usable() -> Optional[str]:
    """How images.sh would get debootstrap (None: it cannot)."""
    if shutil.which("debootstrap"):
        return "debootstrap is installed"
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        return "images.sh installs debootstrap with apt-get"
    return None


def tools_dir() -> str:
    try:
        return str(image_names.images_sh().parent)
    except image_names.ImageError:
        return str(image_names.repo_root() / "tools")


# ---- the checks of one stack ----------------------------------------------------------

def url_check(part: str, label: str, url: str, timeout: float, limit: float, why_needed: str = "") -> Check:
    def run() -> Result:
        why = probe(url, timeout)
        if why is None:
            return ok(why_needed or "answers")
        return fail(why, "{} {} is unreachable ({})".format(label, shown(url), why))

    return Check("url " + shown(url), part, shown(url), run, limit)


def parent_check(stack: Stack, image: str, timeout: float, limit: float) -> Check:
    name, suite, _ = parent_entry(stack.versions, image)
    standin = "stand-in: debootstrap {}".format(suite)

    def run() -> Result:
        t0 = time.monotonic()
        if stack.parent == "debootstrap":
            if not suite:
                return fail("PARENT=debootstrap, but it has no stand-in (versions.env PARENT_*_ROOTFS_SUITE)",
                            "PARENT=debootstrap: parent {} has no debootstrap stand-in".format(image))
            how = debootstrap_usable()
            if how:
                return ok("PARENT=debootstrap: " + how, status=standin)
            return warn("PARENT=debootstrap, but this host has no debootstrap (and no apt-get as root to install "
                        "it): the build stops there unless the stand-in is already made", status=standin)
        rc, _ = docker(["image", "inspect", "--format", "{{.Id}}", image], timeout)
        if rc == 0:
            return ok("present in Docker")
        if rc == 127:
            return fail("docker is not installed", "docker is not installed (needed for parent {})".format(image))
        rc, why = docker(["manifest", "inspect", image], 2 * timeout - (time.monotonic() - t0))
        if rc == 0:
            return ok("pullable (docker manifest inspect)")
        if suite:
            how = debootstrap_usable()
            text = "cannot be pulled ({}): images.sh makes a debootstrap {} stand-in under its name".format(why, suite)
            if how:
                return ok("{} ({})".format(text, how), status=standin,
                          note="parent {} {}".format(image, text))
            return warn(text + ", but this host has no debootstrap (and no apt-get as root to install it)",
                        status=standin, note="parent {} {}, but this host has no debootstrap (and no apt-get as "
                                             "root to install it)".format(image, text))
        if mirrors(timeout):
            return warn("docker manifest inspect: {} (not through the daemon's registry mirror, which "
                        "docker pull uses: it may still work)".format(why))
        return fail("docker manifest inspect: {}; no debootstrap stand-in{}".format(
                        why, "" if name else " (not a versions.env PARENT_*)"),
                    "parent {} cannot be pulled (docker manifest inspect: {})".format(image, why))

    mode = "debootstrap" if stack.parent == "debootstrap" else "pull"
    return Check("parent {} {}".format(image, mode), "parent", image, run, limit)


def mirrors(timeout: float) -> bool:
    """Whether the daemon pulls through a registry mirror, which `docker manifest` does not use."""
    rc, out = docker(["info", "--format", "{{json .RegistryConfig.Mirrors}}"], timeout)
    return rc == 0 and out.startswith("[") and out.strip("[] ") != ""


def d2_check(stack: Stack, versions: Dict[str, str], timeout: float, limit: float) -> Optional[Check]:
    spec = stack.get("DETECTRON2")
    if spec == "sdist":
        sdist = versions.get("DETECTRON2_SDIST", "")
        url = "{}/{}/".format(index_url(), package_name(sdist))
        return url_check("detectron2", "Detectron2 sdist {} on the package index".format(sdist), url, timeout, limit,
                         why_needed="{} (sha256-pinned)".format(sdist))
    if not spec.startswith("git:"):
        return None
    repo, _, commit = spec[len("git:"):].rpartition("@")
    pin = ""
    for key, value in versions.items():
        m = re.match(r"^D2_([A-Z0-9]+)_COMMIT$", key)
        if m and value == commit:
            pin = m.group(1).lower()
    archive = "{}/archive/{}.tar.gz".format(re.sub(r"\.git$", "", repo), commit)
    twin = stack.twin()

    def run() -> Result:
        why = "no D2_*_COMMIT pin of {}".format(commit)
        if pin:
            try:
                out = subprocess.run(["bash", os.path.join(tools_dir(), "d2_source.sh"), "check", pin],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                                     timeout=limit)
                why = (out.stdout.strip().splitlines() or ["exit {}".format(out.returncode)])[-1]
                if out.returncode == 0:
                    return ok(why.replace("ok: ", "pinned archive "))
            except (OSError, subprocess.SubprocessError) as err:
                why = str(err)
            if twin:
                # images.sh need_source: a twin's parents have no git, so there is no clone to fall back on.
                fix = "git clone {} /tmp/d2 && bash tools/d2_source.sh {} /tmp/d2".format(
                    re.sub(r"\.git$", "", repo), pin)
                return fail("{}: {}".format(why, fix), "Detectron2 source of stack {}: {}; {}".format(
                    stack.name, why, fix))
        reached = probe(archive, timeout)
        if reached is None:
            return ok("{}; the build clones {} at {}".format(why, repo, commit[:12]))
        return fail("{}; {} ({})".format(why, archive, reached),
                    "Detectron2 {} at {} is unreachable ({}) and no pinned archive is in sources/ (bash "
                    "tools/d2_source.sh {} <clone or .tar.gz> puts it there)".format(
                        shown(repo), commit[:12], reached, pin or "<stack>"))

    return Check("d2 {} {}".format(spec, "twin" if twin else "clone"), "detectron2",
                 "{}@{}".format(shown(repo), commit[:12]), run, limit)


def base_check(stack: Stack, timeout: float, limit: float) -> Check:
    """Whether the stack's base image is built already: then its build fetches nothing."""
    def run() -> Result:
        try:
            command = ["bash", str(image_names.images_sh()), "name", "base", stack.name]
            out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                 timeout=limit)
        except (image_names.ImageError, OSError, subprocess.SubprocessError) as err:
            return ok("cannot name it: {}".format(err), status="not built")
        tag = out.stdout.strip()
        if out.returncode != 0 or not tag:
            last = (out.stderr.strip().splitlines() or ["exit {}".format(out.returncode)])[-1]
            return ok("cannot name it: {}".format(last), status="not built")
        rc, _ = docker(["image", "inspect", "--format", "{{.Id}}", tag], timeout)
        if rc == 0:
            return ok(tag, status="built")
        return ok(tag, status="not built")

    return Check("base {} {}".format(stack.name, stack.parent), "base image", "stack " + stack.name, run, limit)


def stack_checks(stack: Stack, timeout: float = TIMEOUT) -> List[Check]:
    """Every external part the base image of ``stack`` fetches, in the order the build needs them."""
    v = stack.versions
    limit = 2 * timeout + 1
    checks = []  # type: List[Check]
    if not stack.has_variant():
        checks.append(Check("variant", "variant", "PARENT=" + stack.parent, lambda: fail(
            "no {}* in versions.env".format(stack.variant),
            "no parent variant '{}' (no {}* in versions.env): leave PARENT unset, or PARENT=debootstrap".format(
                stack.parent, stack.variant)), limit))
        return checks
    parents = stack.parents()
    checks += [parent_check(stack, image, timeout, limit) for image in parents]
    for image in parents:
        _, suite, release = parent_entry(v, image)
        if release:
            checks.append(url_check("apt", "apt repository of {}".format(image), release, timeout, limit,
                                    why_needed="the apt lines of {}{}".format(
                                        image, " and its debootstrap stand-in" if suite else "")))
    cuda_apt = stack.get("CUDA_APT").split()
    if len(cuda_apt) >= 2:
        repo = cuda_apt[0].rstrip("/")
        checks.append(url_check("cuda", "NVIDIA's CUDA apt repository", repo + "/Release", timeout, limit))
        checks.append(url_check("cuda", "NVIDIA's cuda-keyring package", repo + "/" + cuda_apt[1], timeout, limit))
    runfile = stack.get("CUDA_RUNFILE")
    if runfile:
        checks.append(url_check("cuda", "NVIDIA's CUDA runfile", runfile, timeout, limit,
                                why_needed="the fallback when the apt repository fails"))
    cuda_deb = stack.get("CUDA_DEB").split()
    if cuda_deb:
        suite = cuda_deb[0].split("/")[0]
        checks.append(url_check("cuda", "Debian {} (for {})".format(suite, " ".join(cuda_deb[1:])),
                                "{}/dists/{}/Release".format(debian_mirror(stack), suite), timeout, limit,
                                why_needed=" ".join(cuda_deb[1:])))
    names = []  # type: List[str]
    for entry in stack.get("TORCH_PIP").split():
        if "://" in entry:
            checks.append(url_check("wheel", "wheel", entry, timeout, limit))
        else:
            names.append(entry)
    torch_index = stack.get("TORCH_INDEX")
    if torch_index:
        url = torch_index if torch_index.endswith(".html") else "{}/torch/".format(torch_index.rstrip("/"))
        checks.append(url_check("wheel", "torch index", url, timeout, limit))
    # pip installs PIP_PIN, the requirements and name==version torch pins from one index: one check.
    wanted = names + stack.get("CUDA_PIP").split() + stack.get("REQUIREMENTS").split() + v.get("PIP_PIN", "").split()
    if wanted:
        first = package_name(wanted[0])
        checks.append(url_check("index", "package index", "{}/{}/".format(index_url(), first), timeout, limit,
                                why_needed="pip's index for {}{}".format(
                                    " ".join(wanted[:3]), " and {} more".format(len(wanted) - 3)
                                    if len(wanted) > 3 else "")))
    d2 = d2_check(stack, v, timeout, limit)
    if d2 is not None:
        checks.append(d2)
    return checks


def debian_mirror(stack: Stack) -> str:
    """The builder parent's Debian mirror (install.sh uses the builder's sources.list), from its Release URL."""
    _, _, release = parent_entry(stack.versions, stack.get("BUILDER_IMAGE"))
    if "/dists/" in release and stack.get("BUILDER_IMAGE").startswith("debian:"):
        return release.split("/dists/")[0]
    return DEFAULT_DEBIAN


def settle(stack: Stack, checks: Sequence[Check]) -> None:
    """What one part's failure means given the others: NVIDIA's runfile stands in for its apt repository."""
    by_key = {c.key: c for c in checks}
    cuda_apt = stack.get("CUDA_APT").split()
    runfile = stack.get("CUDA_RUNFILE")
    if len(cuda_apt) < 2 or not runfile:
        return
    repo = cuda_apt[0].rstrip("/")
    apt = [by_key.get("url " + shown(u)) for u in (repo + "/Release", repo + "/" + cuda_apt[1])]
    apt = [c for c in apt if c is not None and c.result is not None]
    run = by_key.get("url " + shown(runfile))
    if run is None or run.result is None:
        return
    apt_failed = [c for c in apt if c.result.level == ERROR]
    if apt_failed and run.result.level != ERROR:
        for c in apt_failed:
            r = c.result
            c.result = warn("{}: install.sh falls back to the runfile, which answers".format(r.detail),
                            note="{} {} ({}): the build falls back to NVIDIA's CUDA runfile {}".format(
                                c.part, c.what, r.detail, shown(runfile)))
    elif not apt_failed and run.result.level == ERROR:
        run.result = warn("{}: needed only when the apt repository fails".format(run.result.detail))
    elif apt_failed:
        for c in apt_failed:
            r = c.result
            c.result = r._replace(failure=r.failure + " and so is its fallback, NVIDIA's CUDA runfile")


def alternatives(stack: Stack, failures: Sequence[Check]) -> List[str]:
    alts = []  # type: List[str]
    if stack.variant and any(c.part == "parent" for c in failures):
        own = Stack(stack.name, stack.versions).parents()
        if own and all(parent_entry(stack.versions, p)[1] for p in own):
            alts.append("PARENT=debootstrap (the stack's own parents, {}, made with debootstrap)".format(
                and_join(own)))
    mine = stack.archs()
    if mine:
        for other in image_names.STACKS:
            if other == stack.name:
                continue
            theirs = Stack(other, stack.versions).archs()
            if theirs and set(mine) <= set(theirs):
                served = [inst for arch, inst in ARCH_INSTANCES if arch in mine]
                alts.append("STACK={} also runs {} (its arch list has {})".format(
                    other, and_join(served) if served else "these GPUs", and_join(mine)))
    if not os.environ.get("CODEBUILD_BUILD_ID"):  # already on CodeBuild: it cannot be the way out
        alts.append(CODEBUILD)
    return alts


def brief(what: str) -> str:
    """A URL as host/.../last part: enough to tell the failing parts apart in one line."""
    parts = urllib.parse.urlsplit(what)
    if not parts.netloc:
        return what
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return "{}/.../{}".format(parts.netloc.rpartition("@")[2], tail) if tail else parts.netloc


def error_line(stack: Stack, checks: Sequence[Check], others: bool = True) -> Optional[str]:
    failures = [c for c in checks if c.result is not None and c.result.level == ERROR]
    if not failures:
        return None
    line = "preflight: stack {}: {}".format(stack.name, failures[0].result.failure)
    more = failures[1:]
    if more and others:
        named = ["{} {}".format(c.part, brief(c.what)) for c in more[:3]]
        if len(more) > 3:
            named.append("{} more".format(len(more) - 3))
        line += "; also failing: {} (make doctor STACK={} lists them)".format(and_join(named), stack.name)
    alts = alternatives(stack, failures)
    if alts:
        line += "; alternatives: " + ", ".join(alts)
    return "error: " + " ".join(line.split())


def default_timeout() -> float:
    try:
        return float(os.environ.get("SHELFDET_PREFLIGHT_TIMEOUT") or TIMEOUT)
    except ValueError:
        return TIMEOUT


def skipped() -> bool:
    return (os.environ.get("SHELFDET_PREFLIGHT") or "1").strip().lower() in ("0", "no", "false", "off")


def check(name: str, versions: Dict[str, str], timeout: float, say: Callable[[str], None]) -> bool:
    """Whether every external part of the stack's build answers (or its base is built, so the build
    fetches nothing); ``say`` hears the one-line verdict, an ``error:`` line when a part fails."""
    t0 = time.monotonic()
    stack = Stack(name, versions, os.environ.get("PARENT", ""))
    checks = stack_checks(stack, timeout)
    base = base_check(stack, timeout, 2 * timeout + 1)
    if not run_checks([base] + checks, first=base, stop=lambda r: r.status == "built"):
        say("preflight: stack {}: {} is built, its build fetches nothing".format(stack.name, base.result.detail))
        return True
    settle(stack, checks)
    line = error_line(stack, checks)
    if line:
        say(line)
        return False
    for c in checks:
        if c.result.note:
            say("preflight: note: " + " ".join(c.result.note.split()))
    say("preflight: stack {}: {} external parts reachable ({:.1f} s)".format(
        stack.name, len(checks), time.monotonic() - t0))
    return True
