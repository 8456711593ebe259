"""`make bench`: runs every bench/bench_*.py, then prints one table from bench/results/*.json.

Each benchmark writes ``bench/results/<name>.json`` as
``{"name", "metrics": {...}, "target": "...", "machine": {...}}``. The table
also replaces the block between the bench markers in docs/benchmarks.md.
``python bench/run.py --table`` only re-renders the table.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

from _common import update_readme  # noqa: E402


def run_all(only: list) -> int:
    failed = 0
    for script in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(script)[len("bench_"):-3]
        if only and name not in only:
            continue
        print("[bench] {} ...".format(name), flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, script], cwd=ROOT)
        print("[bench] {} exit {} in {:.0f}s".format(name, rc, time.time() - t0), flush=True)
        failed += rc != 0
    return failed


def _fmt(v) -> str:
    if isinstance(v, float):
        return "{:.4g}".format(v)
    return str(v)


def _pinned_torch() -> str:
    with open(os.path.join(ROOT, "versions.env")) as f:
        for line in f:
            if line.startswith("LOCAL_TORCH="):
                return line.strip().split("=", 1)[1]
    return ""


def _stack(machine: dict) -> str:
    """The software stack a result ran on, in words, when it is not the pinned local one ("" when it is)."""
    torch = machine.get("torch", "")
    if not torch or torch.split("+")[0] == _pinned_torch():
        return ""
    parts = [machine.get("device", ""), "torch " + torch, "CUDA " + machine["cuda"] if machine.get("cuda") else "",
             "Python " + machine["python"] if machine.get("python") else ""]
    return ", ".join(p for p in parts if p)


def table() -> str:
    """One table for the results on the stack versions.env pins for .venv; one more for each other stack
    a result ran on (a lent machine's own), headed by that stack."""
    header = ["| benchmark | metric | value |", "|---|---|---|"]
    pinned, others, targets = list(header), {}, []
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as f:
            res = json.load(f)
        name = res.get("name", os.path.basename(path)[:-5])
        machine = res.get("machine", {})
        stack = _stack(machine)
        rows = pinned if not stack else others.setdefault(stack, list(header))
        for k, v in res.get("metrics", {}).items():
            rows.append("| {} | {} | {} |".format(name, k, _fmt(v)))
        if res.get("target"):
            targets.append("- **{}** ({}): {}".format(name, machine.get("device") or "{} CPUs".format(machine.get("cpus", "?")),
                                                     res["target"]))
    out = pinned
    for stack, rows in others.items():
        out += ["", "On {}, a stack the project does not pin (the lent machine's own):".format(stack), ""] + rows
    return "\n".join(out + [""] + targets)


def main(argv: list) -> int:
    failed = 0 if "--table" in argv else run_all([a for a in argv if not a.startswith("-")])
    text = table()
    print(text)
    update_readme("bench", text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
