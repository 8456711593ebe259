#!/usr/bin/env python3
"""`make targets-doc`: docs/targets.md's generated block, every target and variable, from the Makefile.

Read as `make help` reads it: targets from their `## ` comments, variables from the help recipe's
`NAME=$(NAME) (what it is for)` lines, defaults from their `NAME ?= value` lines, and for each
variable the targets whose recipes read it (directly or through AWS_FLAGS, JOB_FLAGS, ...).

  python tools/targets_doc.py           # rewrite the block in docs/targets.md
  python tools/targets_doc.py --check   # exit 1 when the block is stale (tests/test_docs.py)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "shared"))
from shelfdet.core import pages  # noqa: E402  (standard library only)

PAGE = os.path.join(ROOT, "docs", "targets.md")
BLOCK = "targets"
REF = re.compile(r"\$\(([A-Z][A-Z0-9_]*)\)")
# How every target reaches .venv's Python: VENV is read through them by nearly all, and says so itself.
PLUMBING = ("PY", "SHELFDET", "SETUP_STAMP")


def targets(text):
    """[(target, what it does)] in the Makefile's order, as `make help` lists them."""
    return re.findall(r"^([a-z-]+):.*?## (.*)$", text, re.M)


def _described(line):
    """(name, description) of each `NAME=$(VAR) (description)` in one help echo line."""
    out, i = [], 0
    for m in re.finditer(r"\b([A-Z][A-Z0-9_]*)='?\$\([A-Z][A-Z0-9_]*\)'?", line):
        if m.start() < i:
            continue
        desc, i = "", m.end()
        if line[i:i + 2] == " (":
            depth, j = 0, i + 1
            for j in range(i + 1, len(line)):
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                if depth == 0:
                    break
            desc, i = line[i + 2:j], j + 1
        out.append((m.group(1), desc))
    return out


def variables(text):
    """[(name, description)] in the order `make help` prints them."""
    recipe = text.split("\nhelp:", 1)[1].split("\n\n", 1)[0]
    lines = recipe.split("Variables (default):", 1)[1].splitlines()
    return [pair for line in lines if line.strip().startswith('@echo "  ') for pair in _described(line)]


def _default(text, name):
    m = re.search(r"^{}\s*\?=[ \t]*(.*)$".format(name), text, re.M)
    if not m or not m.group(1).strip():
        return ""
    value = m.group(1).strip()
    either = re.match(r"^\$\(or (.*)\)$", value)
    if either:  # $(or $(A),$(B),c) -> A, else B, else c
        value = ", else ".join(REF.sub(r"\1", part) for part in either.group(1).split(","))
    if re.search(r"\$\([a-z]", value):  # a Make function: the description says what it comes to
        return "computed"
    return REF.sub(r"\1", value)


def readers(text):
    """{variable: [targets whose recipes read it]}, through the Makefile's composite variables."""
    composite = {}
    for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)\s*:?=((?:[^\n]*\\\n)*[^\n]*)", text, re.M):
        if name not in PLUMBING:
            composite.setdefault(name, set()).update(REF.findall(value))

    def expand(names, seen):
        for n in names:
            if n not in seen:
                seen.add(n)
                expand(composite.get(n, ()), seen)
        return seen

    used = {}
    for target, body in re.findall(r"^([a-z-]+):[^\n]*\n((?:\t[^\n]*\n?)*)", text, re.M):
        if target == "help":
            continue  # it prints every variable
        for name in expand(REF.findall(body), set()):
            used.setdefault(name, []).append(target)
    used.setdefault("HOST", []).extend(used.get("SERVE_HOST", []))
    return used


def _cell(text):
    return text.replace("|", "\\|")


def block(text):
    rows = ["Generated from the Makefile by `make targets-doc` (what `make help` prints); "
            "a test fails when it is stale.", "", "| target | what it does |", "|---|---|"]
    rows += ["| `make {}` | {} |".format(t, _cell(d)) for t, d in targets(text)]
    used = readers(text)
    rows += ["", "| variable | default | what it is for | read by |", "|---|---|---|---|"]
    for name, desc in variables(text):
        default = _default(text, name)
        rows.append("| `{}` | {} | {} | {} |".format(name, "`{}`".format(_cell(default)) if default else "",
                                                  _cell(REF.sub(r"\1", desc)), ", ".join(sorted(set(used.get(name, []))))))
    return "\n".join(rows)


def main(argv):
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    with open(PAGE) as f:
        page = f.read()
    want = block(text)
    if "--check" in argv:
        if pages.block(page, BLOCK) != want:
            print("docs/targets.md is stale: make targets-doc", file=sys.stderr)
            return 1
        return 0
    with open(PAGE, "w") as f:
        f.write(pages.replace_block(page, BLOCK, want))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
