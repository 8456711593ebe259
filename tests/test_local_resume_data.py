"""A resumed run trains on its own channels: another DATA_DIR is refused before anything is made or changed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, make_ml_root
from shelfdet.core import artefacts


def snapshot(folder):
    """Every entry of the folder: link target or bytes, and its mtime (a rewrite with the same bytes shows too)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                what = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                what = "dir"
            else:
                with open(path, "rb") as f:
                    what = f.read()
            seen[os.path.relpath(path, str(folder))] = (what, st.st_mtime_ns)
    return seen


@pytest.fixture
def run(tiny_dataset, tmp_path):
    """A run folder laid out on the tiny dataset, as `make train RUN_DIR=` leaves it."""
    return make_ml_root(tmp_path / "run", tiny_dataset, evaluation_type="none", eval_period="0")


def make_train(*args, cwd=None):
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "train"] + list(args)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("other", ["another-copy", "not-there"])
def test_resume_refuses_another_data_dir_in_one_line_and_changes_nothing(run, tiny_dataset, tmp_path, other):
    data = tmp_path / other
    if other == "another-copy":  # the same files in another folder are still not the run's channels
        shutil.copytree(str(tiny_dataset), str(data))
    before, data_before = snapshot(run), snapshot(tiny_dataset)
    out = make_train("RUN_DIR={}".format(run), "DATA_DIR={}".format(data))
    assert out.returncode != 0, out.stdout[-3000:]
    errors = [x for x in out.stdout.splitlines() if x.startswith("error:")]
    assert errors == ["error: {} resumes with its own data ({}/input/data): leave out DATA_DIR or give the run's; "
                      "DATA_DIR {} is not the run's {}".format(run, run, data, tiny_dataset)], out.stdout[-3000:]
    assert "[train]" not in out.stdout  # refused before "resuming", generating or laying out
    assert snapshot(run) == before and snapshot(tiny_dataset) == data_before
    assert data.exists() == (other == "another-copy")  # no dataset generated into the other folder


def test_resume_without_data_dir_trains_on_the_runs_own_data(run, tiny_dataset, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-m", "shelfdet", "train", "--run-dir", str(run)], cwd=str(cwd),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                         env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "shared")))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "[train] resuming {}".format(run) in out.stdout
    assert "generating" not in out.stdout and os.listdir(str(cwd)) == []  # no default ./data made
    assert os.readlink(str(run / "input" / "data" / "training")) == str(tiny_dataset / "training")
    assert artefacts.read(str(run / "model")).model_type == "faster_rcnn"


def test_resume_whose_data_is_gone_is_refused_not_regenerated(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_dataset), str(data))
    run = make_ml_root(tmp_path / "run", data)
    shutil.rmtree(str(data))
    before = snapshot(run)
    out = make_train("RUN_DIR={}".format(run), "DATA_DIR={}".format(data))
    assert out.returncode != 0
    errors = [x for x in out.stdout.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "{} has no dataset now (no report.json)".format(data) in errors[0], out.stdout[-3000:]
    assert not data.exists() and snapshot(run) == before


def _makefile_passes_data_dir_only_when_given():
    with open(str(ROOT / "Makefile")) as f:
        return "DATA_DIR_GIVEN" in f.read()


@pytest.mark.skipif(not _makefile_passes_data_dir_only_when_given(),
                    reason="the Makefile still passes its default DATA_DIR to a resumed train (issue 20.5)")
def test_make_train_run_dir_alone_resumes_on_the_runs_data(run, tiny_dataset):
    out = make_train("RUN_DIR={}".format(run))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "[train] resuming {}".format(run) in out.stdout and "generating" not in out.stdout
