"""docs/python.md runs as written: its Python blocks, in order, against a run trained here.

The blocks share one namespace (as in a notebook) and run in a folder that holds the run as
runs/demo and one of its data set's test photos as shelf.jpg, the names the page uses.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_ml_root, run_train

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def blocks():
    return BLOCK.findall(PAGE.read_text())


@pytest.fixture(scope="module")
def demo_folder(tiny_dataset, tmp_path_factory):
    """A folder with runs/demo (a complete 4-iteration training) and shelf.jpg."""
    base = tmp_path_factory.mktemp("python-api")
    run = make_ml_root(base / "runs" / "demo", tiny_dataset)
    proc = run_train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    photo = sorted((Path(tiny_dataset) / "test").glob("*.jpg"))[-1]
    shutil.copyfile(str(photo), str(base / "shelf.jpg"))
    return base


def test_the_page_has_its_examples():
    assert len(blocks()) >= 4


def test_every_example_on_the_page_runs(demo_folder, monkeypatch, capsys):
    monkeypatch.chdir(demo_folder)
    namespace = {"__name__": "__docs__"}
    for number, code in enumerate(blocks(), 1):
        try:
            exec(compile(code, "{} block {}".format(PAGE.name, number), "exec"), namespace)
        except Exception as err:
            pytest.fail("docs/python.md block {} failed: {}: {}\n{}".format(number, type(err).__name__, err, code))
    out = capsys.readouterr().out
    assert "boxes in a" in out and "faster_rcnn AP" in out, out
    assert (demo_folder / "data-small" / "report.json").is_file()


def test_import_shelfdet_stays_light():
    code = ("import sys, shelfdet; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'detectron2', 'numpy', 'cv2', 'PIL', 'boto3')); print(heavy); sys.exit(1 if heavy else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "shared")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, "import shelfdet loaded " + proc.stdout + proc.stderr


def test_the_api_names_resolve():
    import shelfdet

    for name in shelfdet.__all__:
        assert getattr(shelfdet, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'predict_all'"):
        shelfdet.predict_all  # noqa: B018


def test_read_run_of_an_unfinished_run(tmp_path):
    import shelfdet

    run = tmp_path / "runs" / "stopped"
    (run / "input" / "config").mkdir(parents=True)
    (run / "input" / "config" / "hyperparameters.json").write_text('{"model-type": "retinanet"}')
    assert shelfdet.read_run(str(run)) == {"run": "stopped", "algorithm": "retinanet", "complete": False}
