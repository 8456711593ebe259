#!/usr/bin/env python3
"""The content hash that ends each image tag. tools/images.sh runs this (and
launch/image_names.py asks tools/images.sh), so the rule lives here only.

  bash tools/images.sh buildargs <image> <stack> | python3 tools/image_hash.py <image> [--root DIR] [--list]
  python3 tools/image_hash.py --context <image> [--root DIR]   # the build context tools/images.sh sends

It hashes exactly what goes into the image:
- images/<image>/Dockerfile;
- the build-context files its COPY/ADD instructions name, as tools/images.sh
  sends them: the files git tracks (their working-tree content, edits not yet
  committed included; a new file once `git add`ed), .dockerignore applied with
  Docker's own rules, each as path + executable bit + content (or link target).
  Where the root is no git work tree (the zip CodeBuild unpacks, which holds
  only tracked files), every file there;
- the build arguments on stdin (KEY=VALUE a line): the stack's pins from
  versions.env for base, the parent's tag for training, serving and test (so a
  change to the base reaches them).
Left out: images/.build/, which tools/images.sh writes before each build (the
host's CA bundle, read by pip in builder stages only; the Detectron2 source
archive, whose sha256 is a build argument).
Prints 12 hex digits of a sha256; --list prints the hashed paths instead;
--context prints, NUL-separated, the files of the build context: the Dockerfile,
.dockerignore, the hashed files and the images/.build files the Dockerfile copies.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

GENERATED = "images/.build"
LENGTH = 12


def dockerfile_sources(text):
    """The build-context sources of the COPY/ADD instructions (not COPY --from)."""
    sources, logical = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        logical = ""
        if word.upper() not in ("COPY", "ADD"):
            continue
        words = rest.split()
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        rest = " ".join(w for w in words if not w.startswith("--"))
        paths = json.loads(rest) if rest.startswith("[") else rest.split()
        sources += [os.path.normpath(p).lstrip("/") for p in paths[:-1]]
    return sources


def _regex(pattern):
    """Docker's .dockerignore pattern (moby patternmatcher) as a regular expression."""
    out, i = "^", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i + 1:i + 2] == "*":
                i += 1
                if pattern[i + 1:i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 == len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                out += "[" + pattern[i + 1:end].replace("\\", "\\\\") + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


class DockerIgnore(object):
    """Which context paths `docker build` leaves out (last matching pattern wins; '!' re-includes)."""

    def __init__(self, text):
        self.patterns = []
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            keep = line.startswith("!")
            if keep:
                line = line[1:].strip()
            line = os.path.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
            self.patterns.append((keep, _regex(line)))
        self.has_exceptions = any(keep for keep, _ in self.patterns)

    def excluded(self, path):
        parents = path.split("/")[:-1]
        matched = False
        for keep, regex in self.patterns:
            if keep != matched:
                continue
            hit = bool(regex.match(path)) or any(regex.match("/".join(parents[:k + 1])) for k in range(len(parents)))
            if hit:
                matched = not keep
        return matched


def tracked_files(root):
    """The files git tracks under root (relative paths), or None where root is no git work tree's top."""
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
            return None
        out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p)


def context_files(root, sources, ignore, tracked=None):
    """The context files (relative paths) under the sources, as tools/images.sh sends them
    (only those in ``tracked`` when it is given)."""
    found = set()
    for src in sources:
        if src == GENERATED or src.startswith(GENERATED + "/"):
            continue
        if any(ch in src for ch in "*?["):  # a wildcard: every file it names, or that is under a folder it names
            pattern = _regex(src)
            for path in _walk(root, ".", ignore):
                parts = path.split("/")
                if any(pattern.match("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
                    found.add(path)
        else:
            found.update(_walk(root, src, ignore))
    if tracked is not None:
        found &= tracked
    return sorted(found)


def build_context(root, image):
    """Every file of the image's build context (see --context)."""
    dockerfile = "images/{}/Dockerfile".format(image)
    with open(os.path.join(root, dockerfile)) as f:
        sources = dockerfile_sources(f.read())
    ignore = _ignore(root)
    files = [dockerfile] + [".dockerignore"] * os.path.isfile(os.path.join(root, ".dockerignore"))
    files += context_files(root, sources, ignore, tracked_files(root))
    for src in sources:
        if src == GENERATED or src.startswith(GENERATED + "/"):  # written by tools/images.sh for this build
            pattern = _regex(re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "*", src))
            folder = os.path.join(root, GENERATED)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                rel = GENERATED + "/" + name
                if pattern.match(rel) and os.path.isfile(os.path.join(root, rel)) and rel not in files:
                    files.append(rel)
    return files


def _ignore(root):
    path = os.path.join(root, ".dockerignore")
    return DockerIgnore(open(path).read() if os.path.exists(path) else "")


def _walk(root, rel, ignore):
    """Files at or under rel, minus what .dockerignore excludes (a link is listed, never followed)."""
    full = os.path.join(root, rel)
    if not os.path.isdir(full) or os.path.islink(full):
        if os.path.lexists(full) and not ignore.excluded(rel):
            yield rel
        return
    for folder, subdirs, files in os.walk(full):
        base = os.path.relpath(folder, root).replace(os.sep, "/")
        base = "" if base == "." else base + "/"
        kept = []
        for d in subdirs:
            if os.path.islink(os.path.join(folder, d)):
                files.append(d)
            elif ignore.has_exceptions or not ignore.excluded(base + d):
                kept.append(d)  # without '!' patterns, an excluded folder is never entered
        subdirs[:] = kept
        for f in files:
            if not ignore.excluded(base + f):
                yield base + f


def content_hash(root, image, buildargs, listing=None):
    h = hashlib.sha256()

    def field(data):
        data = data if isinstance(data, bytes) else data.encode("utf-8")
        h.update(str(len(data)).encode("ascii") + b":" + data)

    field("shelfdet image content v1")
    for arg in sorted(a for a in buildargs if a):
        field("arg")
        field(arg)
    dockerfile = "images/{}/Dockerfile".format(image)
    with open(os.path.join(root, dockerfile), "rb") as f:
        text = f.read()
    field("dockerfile")
    field(text)
    ignore = _ignore(root)
    for rel in context_files(root, dockerfile_sources(text.decode("utf-8")), ignore, tracked_files(root)):
        full = os.path.join(root, rel)
        if listing is not None:
            listing.append(rel)
        field("file")
        field(rel)
        if os.path.islink(full):
            field("link")
            field(os.readlink(full))
            continue
        field("x" if os.stat(full).st_mode & 0o111 else "-")
        with open(full, "rb") as f:
            field(f.read())
    return h.hexdigest()[:LENGTH]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--list", action="store_true", help="print the hashed context files instead")
    p.add_argument("--context", action="store_true", help="print the build context's files, NUL-separated")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.root, "images", args.image, "Dockerfile")):
        sys.stderr.write("error: no images/{}/Dockerfile under {}\n".format(args.image, args.root))
        return 2
    if args.context:
        sys.stdout.write("".join(f + "\0" for f in build_context(args.root, args.image)))
        return 0
    listing = []
    digest = content_hash(args.root, args.image, sys.stdin.read().splitlines(), listing)
    print("\n".join(listing) if args.list else digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
