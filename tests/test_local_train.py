"""`make train` on this machine: a run folder keeps its own hyperparameters across resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import ROOT, TINY_HP, pause_env, wait_for_checkpoint
from shelfdet.core import artefacts

HP = " ".join("--{} {}".format(k, v) for k, v in dict(TINY_HP, **{
    "num-iter": "8", "checkpoint-period": "2", "eval-period": "0", "evaluation-type": "none"}).items())


def make_train(*args, **popen):
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "train"] + list(args)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("env", dict(os.environ, PYTHONUNBUFFERED="1"))
    return subprocess.Popen(cmd, stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


@pytest.fixture(scope="module")
def interrupted_retinanet_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "retina"
    log = run.parent / "retina-first.log"
    with open(str(log), "w") as out:
        # Paused by the run itself after its iteration-3 checkpoint: the kill lands there on any machine.
        proc = make_train("ALGO=retinanet", "DATA_DIR={}".format(tiny_dataset), "RUN_DIR={}".format(run),
                          "HP=" + HP, stdout=out, env=dict(os.environ, PYTHONUNBUFFERED="1", **pause_env(3)))
        try:
            wait_for_checkpoint(run / "checkpoints", 3, proc, output=log.read_text)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # make and the training under it, no clean-up
            proc.wait()
    assert not (run / "model" / "artefacts.json").exists()
    return run


@pytest.mark.parametrize("given, says", [
    (["ALGO=faster_rcnn"], "ALGO faster_rcnn is retinanet in the run"),
    (["HP=--num-iter 120"], "HP --num-iter 120 is 8 in the run"),
])
def test_resume_refuses_other_hyperparameters_in_one_line(interrupted_retinanet_run, tiny_dataset, given, says):
    run = interrupted_retinanet_run
    before = (run / "input" / "config" / "hyperparameters.json").read_text()
    proc = make_train("DATA_DIR={}".format(tiny_dataset), "RUN_DIR={}".format(run), *given)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], out[-2000:]
    assert (run / "input" / "config" / "hyperparameters.json").read_text() == before


def test_resume_without_algo_or_hp_finishes_the_run_as_started(interrupted_retinanet_run, tiny_dataset):
    run = interrupted_retinanet_run
    proc = make_train("DATA_DIR={}".format(tiny_dataset), "RUN_DIR={}".format(run))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from iteration" in out and "of 8" in out, out[-3000:]
    assert artefacts.read(str(run / "model")).model_type == "retinanet"
    assert json.loads((run / "model" / "metrics.json").read_text())["iterations"] == 8
    import torch

    final = torch.load(str(run / "checkpoints" / "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 7
    assert any(k.startswith("head.") for k in final["model"]), "not a RetinaNet checkpoint"
    _model_folder_is_the_trained_model(run, final["model"], tiny_dataset)


def _model_folder_is_the_trained_model(run, trained, data_dir):
    """The model folder holds safetensors and no pickle, and it is the trained model: the run's own final
    checkpoint (Detectron2's file, the same iteration), loaded in memory, predicts exactly what the folder does."""
    import torch
    from detectron2.modeling import build_model

    from shelfdet.core import photos, safeweights
    from shelfdet.core.inference import Detector, inference_hyperparameters, load_config, options_of

    model_dir = run / "model"
    files = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert artefacts.WEIGHTS in files and not [f for f in files if f.endswith((".pth", ".pkl"))], files
    saved = safeweights.load(str(model_dir / artefacts.WEIGHTS))
    assert saved.keys() == trained.keys()
    for key, value in trained.items():
        assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key
    art = artefacts.read(str(model_dir))
    # Every candidate box: a model trained for 8 iterations scores few boxes above its own threshold.
    overrides = {"pred-thr": "0.001"}
    hp = inference_hyperparameters(art.manifest.get("hyperparameters") or {}, overrides)
    cfg = load_config(art.config, "cpu", art.changed_config_keys, hp, overrides.keys())
    in_memory = build_model(cfg)
    in_memory.load_state_dict(trained)
    from_memory = Detector.from_model(cfg, in_memory, art.class_names, options=options_of(hp))
    from_folder = Detector.from_model_dir(str(model_dir), "cpu", overrides)
    paths = sorted((data_dir / "test").glob("*.jpg"))
    boxes = 0
    for photo in paths:
        image = photos.read(str(photo))
        got = from_folder.predict([image])[0]
        assert got == from_memory.predict([image])[0], photo
        boxes += len(got["scores"])
    assert paths and boxes, "no box on any test photo: the comparison would be vacuous"
