"""What a new user meets first: outputs where the README says, generated folders kept
out of git, and Make's MODEL_DIR pointing at a model that can actually be served."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from _serving_support import ROOT, encode, make_tiny_model, shelf_image


def readme_row(target: str) -> str:
    """The target's row in docs/targets.md (the README links it)."""
    rows = [line for line in (ROOT / "docs" / "targets.md").read_text().splitlines() if line.startswith("| `make " + target)]
    assert rows, "docs/targets.md has no row for make {}".format(target)
    return rows[0]


def test_predict_writes_exactly_the_files_the_docs_name(tmp_path):
    model_dir = make_tiny_model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "shelf.jpg").write_bytes(encode(shelf_image(3, 160, 120)))
    before = set(os.listdir(work))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "shared"), OMP_NUM_THREADS="1")
    # As `make predict` runs it: no --out, in the folder the user is in.
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "predict", "--image", "shelf.jpg", "--model-dir", model_dir],
                          cwd=str(work), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    documented = {p.replace("<f>", "shelf.jpg") for p in re.findall(r"`(predictions/<f>\.\w+)`", readme_row("predict"))}
    assert documented == {"predictions/shelf.jpg.json", "predictions/shelf.jpg.png"}, readme_row("predict")
    written = {os.path.relpath(os.path.join(d, f), str(work)) for d, _, fs in os.walk(str(work)) for f in fs}
    assert written - before == documented
    assert proc.stdout.split()[-2:] == sorted(documented)


def _git(*args):
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(ROOT)] + list(args), capture_output=True, text=True)


HAVE_GIT = shutil.which("git") is not None and _git("rev-parse").returncode == 0


@pytest.mark.skipif(not HAVE_GIT, reason="needs git and the repository's .git")
@pytest.mark.parametrize("path", ["data/annotations/training.manifest", "runs/detectron2-faster-rcnn-x/model/x.safetensors",
                                  "predictions/shelf.jpg.json", "data/visualize/validation/a.png",
                                  "bench/results/loss.png", "sources/detectron2-v0.4.1.tar.gz", ".venv/bin/python"])
def test_every_generated_path_is_ignored_by_git(path):
    assert _git("check-ignore", "-q", "--no-index", path).returncode == 0, "{} is not git-ignored".format(path)


def test_model_dir_defaults_to_the_newest_complete_model(tmp_path):
    for name in ("Makefile", "versions.env"):
        shutil.copy(str(ROOT / name), str(tmp_path / name))
    complete = tmp_path / "runs" / "detectron2-faster-rcnn-1" / "model"
    interrupted = tmp_path / "runs" / "detectron2-retinanet-2" / "model"
    complete.mkdir(parents=True)
    (complete / "artefacts.json").write_text("{}")
    interrupted.mkdir(parents=True)  # newer, but never finished: no artefacts.json
    (interrupted / "model_final.safetensors.tmp").write_text("")
    now = time.time()
    os.utime(str(complete / "artefacts.json"), (now - 60, now - 60))
    os.utime(str(interrupted), (now, now))
    out = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=60).stdout
    assert "MODEL_DIR=runs/detectron2-faster-rcnn-1/model " in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("Makefile", "versions.env"):
        shutil.copy(str(ROOT / name), str(empty / name))
    out = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=str(empty), capture_output=True,
                         text=True, timeout=60).stdout
    assert "MODEL_DIR= " in out, out
