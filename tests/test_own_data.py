"""docs/own-data.md's worked example, run as written: a folder of photos with YOLO labels (one photo
damaged, one label row broken) through `make data FORMAT=yolo`, `make train` and `make evaluate`."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from test_data_formats import synthetic_shelves, write_yolo

ROOT = Path(__file__).resolve().parent.parent


def documented_example():
    """The commands of the page's last bash block (its worked example)."""
    page = (ROOT / "docs" / "own-data.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", page, re.S)[-1]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_worked_example_goes_from_labelled_photos_to_an_evaluated_model(tmp_path):
    images, labels = synthetic_shelves(tmp_path / "generated", train=8, val=3, test=3)
    work = tmp_path / "work"
    work.mkdir()
    write_yolo(work / "shelves-yolo", images, labels)
    broken = sorted((work / "shelves-yolo" / "labels" / "train").glob("*.txt"))[-1]
    rows = len(broken.read_text().splitlines())
    with open(str(broken), "a") as f:
        f.write("0 0.5 0.5\n")
    # The project's Makefile in a folder of its own (runs/, predictions/ land there), with this checkout's venv.
    for name in ("Makefile", "versions.env", "tools/setup_venv.sh", "shared/pyproject.toml"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(ROOT / name), str(work / name))
    venv = os.environ.get("VENV") or str(ROOT / ".venv")
    env = dict(os.environ, VENV=venv, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    commands = documented_example()
    assert [c[:2] for c in commands] == [["make", "data"], ["make", "train"], ["make", "evaluate"]]
    outputs = []
    for command in commands:
        proc = subprocess.run(command + ["VENV=" + venv], cwd=str(work), capture_output=True, text=True, env=env,
                              timeout=1500)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, "{}:\n{}".format(" ".join(command), outputs[-1][-3000:])

    report = json.loads((work / "data-own" / "report.json").read_text())
    assert report["format"] == "yolo" and report["classes"] == ["SKU"]
    bad = [p for p in report["problems"] if p["kind"] == "bad_value"]
    # Paths as the command named them (SRC relative to the folder make ran in).
    assert [(str(work / p["file"]), p["line"], p["field"]) for p in bad] == [(str(broken), rows + 1, "row")]
    assert "corrupted image dropped: " in outputs[0]
    (run,) = [p.parent.parent for p in (work / "runs").glob("*/model/artefacts.json")]
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    assert metrics["iterations"] == 20 and 0.0 <= metrics["AP"] <= 1.0
    evaluated = json.loads((work / "predictions" / "evaluation" / "metrics.json").read_text())
    assert evaluated["AP"] == metrics["AP"] or abs(evaluated["AP"] - metrics["AP"]) < 1e-6
