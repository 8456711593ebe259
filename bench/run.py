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


def table() -> str:
    rows = ["| benchmark | metric | value |", "|---|---|---|"]
    targets = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as f:
            res = json.load(f)
        name = res.get("name", os.path.basename(path)[:-5])
        machine = res.get("machine", {})
        for k, v in res.get("metrics", {}).items():
            rows.append("| {} | {} | {} |".format(name, k, _fmt(v)))
        if res.get("target"):
            targets.append("- **{}** ({}): {}".format(name, machine.get("device") or "{} CPUs".format(machine.get("cpus", "?")),
                                                     res["target"]))
    return "\n".join(rows + [""] + targets)



def main(argv: list) -> int:
    failed = 0 if "--table" in argv else run_all([a for a in argv if not a.startswith("-")])
    text = table()
    print(text)
    update_readme("bench", text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
