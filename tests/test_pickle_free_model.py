"""A model folder is data, never code: serving, `make predict` and `make evaluate` never unpickle it.

Each folder here carries a `.pth` that creates a marker file when unpickled (its
``__reduce__`` calls ``open(marker, "w")``). The processes under test run with
``torch.load`` stripped of ``weights_only``, as on cu101's torch 1.6 (which has
none), so any ``torch.load`` of a model folder's file would create the marker;
the first test proves it would. Then, over a real HTTP server and the real
commands, each folder is either refused in one line or served from its
safetensors, and the marker is never created.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from _serving_support import ServerProcess, encode, make_tiny_model, shelf_image, write_dataset
from conftest import ROOT
from shelfdet.core import artefacts, safeweights

# As torch 1.6 loads (cu101): no weights_only, every pickle runs. Imported first by every Python under test.
# (Through an open file: newer torch reads a path ending in .safetensors as safetensors, torch 1.6 unpickles it.)
AS_TORCH_1_6 = '''
import os

import torch

_load = torch.load


def _load_as_torch_1_6(f, *args, **kwargs):
    kwargs["weights_only"] = False
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as opened:
            return _load(opened, *args, **kwargs)
    return _load(f, *args, **kwargs)


torch.load = _load_as_torch_1_6
'''

REFUSED = "holds its weights as a pickle (model_final.pth), which shelfdet never loads"
NAMES = "python -m shelfdet convert-model"
NOT_SAFETENSORS = "is not a safetensors weights file shelfdet can read"


class _RunsCode:
    """Unpickled, it creates ``marker``: what a hostile model file would do with os.system instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pth(path: Path, marker: Path) -> None:
    torch.save({"model": _RunsCode(str(marker))}, str(path))


def as_format_1(model_dir: Path, weights: str = artefacts.LEGACY_WEIGHTS) -> None:
    """The artefacts.json shelfdet wrote before its weights were safetensors."""
    path = model_dir / artefacts.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format"] = artefacts.LEGACY_FORMAT
    manifest["files"]["weights"] = weights
    path.write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("as_torch_1_6")
    (site / "sitecustomize.py").write_text(AS_TORCH_1_6)
    return {"PYTHONPATH": "{}:{}".format(site, ROOT / "shared"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """legacy: format 1, its weights only a hostile .pth; beside: format 2 with a hostile .pth next to its
    safetensors; disguised: format 2 whose model_final.safetensors is the hostile pickle. Each with its marker."""
    base = tmp_path_factory.mktemp("hostile")
    tiny = Path(make_tiny_model(base))
    out = {}
    for kind in ("legacy", "beside", "disguised"):
        folder = base / kind
        shutil.copytree(str(tiny), str(folder))
        marker = base / "{}.ran".format(kind)
        if kind == "legacy":
            (folder / artefacts.WEIGHTS).unlink()
            hostile_pth(folder / artefacts.LEGACY_WEIGHTS, marker)
            as_format_1(folder)
        elif kind == "beside":
            hostile_pth(folder / artefacts.LEGACY_WEIGHTS, marker)
        else:
            hostile_pth(folder / artefacts.WEIGHTS, marker)
        out[kind] = (folder, marker)
    return tiny, out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    images = {"shelf_{}.jpg".format(i): shelf_image(100 + i) for i in range(3)}
    boxes = {name: [[10.0, 10.0, 40.0, 50.0]] for name in images}
    return write_dataset(tmp_path_factory.mktemp("eval_data"), images, boxes)


def shelfdet(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "shelfdet"] + list(args), capture_output=True, text=True,
                          env=dict(os.environ, **env), cwd=str(ROOT), timeout=timeout)


def _error_lines(text: str):
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_the_hostile_pth_runs_code_when_torch_1_6_would_load_it(env, tmp_path):
    """The harness is live: a torch.load of such a file in these processes creates the marker."""
    for name in ("m.pth", "m.safetensors"):
        marker = tmp_path / (name + ".ran")
        hostile_pth(tmp_path / name, marker)
        run = subprocess.run([sys.executable, "-c", "from shelfdet.core import compat; compat.torch_load({!r})".format(
            str(tmp_path / name))], capture_output=True, text=True, env=dict(os.environ, **env))
        assert run.returncode == 0, run.stderr[-2000:]
        assert marker.exists(), name


def test_serving_refuses_a_pickle_only_folder_in_one_line(folders, env, tmp_path):
    folder, marker = folders[1]["legacy"]
    server = ServerProcess(str(folder), tmp_path / "serve.log", env=env)
    try:
        rc = server.proc.wait(300)
        log = server.log(None)
    finally:
        server.stop()
    assert rc == 2, log[-3000:]
    errors = _error_lines(log)
    assert len(errors) == 1 and REFUSED in errors[0] and NAMES in errors[0], log[-3000:]
    assert not marker.exists()


def test_serving_uses_the_safetensors_and_never_the_pth_beside_it(folders, env, tmp_path):
    tiny, kinds = folders
    folder, marker = kinds["beside"]
    server = ServerProcess(str(folder), tmp_path / "serve.log", env=env)
    try:
        server.wait_ready()
        photo = shelf_image(7)
        r = httpx.post(server.url + "/invocations", content=encode(photo),
                       headers={"Content-Type": "image/jpeg", "Accept": "application/json"}, timeout=120)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
    assert not marker.exists()
    from shelfdet.core.inference import Detector

    detector = Detector.from_model_dir(str(tiny), "cpu")
    expected = detector.predict([detector.decode(encode(photo))])[0]
    got = r.json()
    got = got[0] if isinstance(got, list) else got
    assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)
    assert np.allclose(got["pred_boxes"], expected["pred_boxes"], atol=1e-3)


def test_serving_refuses_a_pickle_named_safetensors(folders, env, tmp_path):
    folder, marker = folders[1]["disguised"]
    server = ServerProcess(str(folder), tmp_path / "serve.log", env=env)
    try:
        rc = server.proc.wait(300)  # the model fails to load: the server says why and exits
        log = server.log(None)
    finally:
        server.stop()
    assert rc != 0 and NOT_SAFETENSORS in log, log[-3000:]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["legacy", "beside", "disguised"])
def test_predict_and_evaluate_never_unpickle_the_model_folder(folders, env, dataset, tmp_path, kind):
    folder, marker = folders[1][kind]
    image = dataset.parent.parent / "test" / "shelf_0.jpg"
    predict = shelfdet(env, "predict", "--image", str(image), "--model-dir", str(folder), "--device", "cpu",
                       "--out", str(tmp_path / "pred"))
    evaluate = shelfdet(env, "evaluate", "--model-dir", str(folder), "--manifest", str(dataset), "--device", "cpu",
                        "--out-dir", str(tmp_path / "eval"))
    assert not marker.exists()
    for run in (predict, evaluate):
        if kind == "beside":
            assert run.returncode == 0, run.stderr[-3000:]
        else:
            errors = _error_lines(run.stderr)
            assert run.returncode == 2 and len(errors) == 1, run.stderr[-3000:]
            if kind == "legacy":
                assert REFUSED in errors[0] and NAMES in errors[0], errors
            else:
                assert NOT_SAFETENSORS in errors[0], errors
    if kind == "beside":
        assert (tmp_path / "pred" / "shelf_0.jpg.json").is_file()
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert 0.0 <= metrics["AP"] <= 1.0


def test_convert_model_refuses_without_trust_pickle(folders, env):
    folder, marker = folders[1]["legacy"]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    run = shelfdet(env, "convert-model", str(folder))
    errors = _error_lines(run.stderr)
    assert run.returncode == 2 and len(errors) == 1 and "pass --trust-pickle" in errors[0], run.stderr[-2000:]
    assert not marker.exists()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before


def test_convert_model_with_trust_pickle_converts_an_old_folder(folders, tmp_path):
    from shelfdet.commands import convert_model
    from shelfdet.core import photos
    from shelfdet.core.inference import Detector

    tiny = folders[0]
    old = tmp_path / "old"
    shutil.copytree(str(tiny), str(old))
    state = safeweights.load(str(old / artefacts.WEIGHTS))
    (old / artefacts.WEIGHTS).unlink()
    torch.save({"model": state}, str(old / artefacts.LEGACY_WEIGHTS))  # as training wrote it before
    as_format_1(old)
    with pytest.raises(artefacts.ArtefactError, match=REFUSED.replace("(", r"\(").replace(")", r"\)")):
        Detector.from_model_dir(str(old), "cpu")

    assert convert_model.main([str(old), "--trust-pickle"]) == 0
    manifest = json.loads((old / artefacts.MANIFEST).read_text())
    assert manifest["format"] == artefacts.FORMAT and manifest["files"]["weights"] == artefacts.WEIGHTS
    assert manifest["converted"]["from"] == artefacts.LEGACY_WEIGHTS
    converted = safeweights.load(str(old / artefacts.WEIGHTS))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v) for k, v in state.items())
    photo = photos.decode(encode(shelf_image(11)))
    got = Detector.from_model_dir(str(old), "cpu").predict([photo])[0]
    expected = Detector.from_model_dir(str(tiny), "cpu").predict([photo])[0]
    assert got == expected
    # A second run has nothing to do.
    assert convert_model.main([str(old), "--trust-pickle"]) == 0


def test_convert_model_trusting_a_hostile_pth_still_loads_tensors_only_where_torch_can(folders, tmp_path, capsys):
    """torch >= 1.13 (the cpu and local stacks) restricts the load to tensors even when trusted."""
    import inspect

    if "weights_only" not in inspect.signature(torch.load).parameters:
        pytest.skip("torch {} has no weights_only: --trust-pickle runs what the file holds".format(torch.__version__))
    from shelfdet.commands import convert_model

    folder = tmp_path / "legacy"
    shutil.copytree(str(folders[1]["legacy"][0]), str(folder))
    marker = tmp_path / "ran"
    hostile_pth(folder / artefacts.LEGACY_WEIGHTS, marker)
    assert convert_model.main([str(folder), "--trust-pickle"]) == 2
    err = capsys.readouterr().err
    assert "torch could not load it as a checkpoint of tensors" in err and len(_error_lines(err)) == 1, err
    assert not marker.exists() and not (folder / artefacts.WEIGHTS).exists()


def test_convert_model_on_a_converted_folder_checks_its_weights(folders, capsys):
    from shelfdet.commands import convert_model

    assert convert_model.main([str(folders[0])]) == 0
    assert "nothing to convert" in capsys.readouterr().out
    folder, marker = folders[1]["disguised"]
    assert convert_model.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert NOT_SAFETENSORS in err and len(_error_lines(err)) == 1, err
    assert not marker.exists()
