"""Hyperparameters -> Detectron2 config: the choices the reference got wrong."""
from __future__ import annotations

import pytest

from shelfdet.core import hyperparameters as H
from shelfdet.core.config import ConfigError, build_config


def _cfg(profile="sagemaker", **raw):
    hp = H.parse({k.replace("_", "-"): str(v) for k, v in raw.items()}, profile=profile)
    return build_config(hp, ["SKU"], "train", "val", "/tmp/unused")


def test_lr_decays_inside_the_run():
    cfg = _cfg(num_iter=3000)
    assert cfg.SOLVER.STEPS and all(0 < s < 3000 for s in cfg.SOLVER.STEPS)
    assert cfg.SOLVER.WARMUP_ITERS <= 300


@pytest.mark.parametrize("algo,backbone", [(a, b) for a in H.ALGORITHMS for b in H.BACKBONES
                                           if a == "faster_rcnn" or b in H.RETINANET_BACKBONES])
def test_every_listed_backbone_builds_a_config(algo, backbone):
    weights = "none" if backbone == "R_18_FPN" else "zoo"
    cfg = _cfg(model_type=algo, backbone=backbone, weights=weights)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    if weights == "zoo":
        assert cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN"


def test_from_scratch_trains_every_stage_with_bn():
    cfg = _cfg("local")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0


def test_unknown_combinations_fail_clearly():
    with pytest.raises(H.HyperparameterError, match="no RetinaNet config"):
        _cfg(model_type="retinanet", backbone="R_50_C4")
    with pytest.raises(ConfigError, match="R_18_FPN has no model-zoo weights"):
        _cfg(backbone="R_18_FPN")
    with pytest.raises(H.HyperparameterError, match="did you mean 'num-iter'"):
        H.parse({"num-iters": "5"})


def test_the_training_page_documents_the_current_hyperparameter_table():
    from pathlib import Path

    from shelfdet.commands import hp_table
    from shelfdet.core import pages

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    assert pages.block(page, hp_table.BLOCK) == H.markdown_table(), \
        "docs/training.md's table is stale: python -m shelfdet hp-table --write docs/training.md"


@pytest.mark.parametrize("cpus,procs,expected", [
    (2, 1, 1),     # this laptop: one core for the loop, one worker
    (1, 1, 1),     # never 0 by itself: 0 would load in the training loop
    (8, 1, 7),     # ml.p3.2xlarge: 8 vCPUs, 1 GPU
    (64, 8, 7),    # ml.p3.16xlarge
    (96, 8, 11),   # ml.p4d.24xlarge
    (192, 8, 16),  # ml.p5.48xlarge: 23 capped
    (8, 8, 1),     # fewer CPUs than GPUs would need
])
def test_num_workers_auto_is_the_cpus_per_process_less_one(cpus, procs, expected):
    from shelfdet.core.config import num_workers

    assert num_workers("auto", procs, cpus) == expected


def test_num_workers_defaults_to_auto_and_stays_overridable(monkeypatch):
    from shelfdet.core import runtime

    monkeypatch.setattr(runtime, "available_cpus", lambda: 96)
    for profile in ("sagemaker", "local"):
        assert H.parse({}, profile).num_workers == "auto"
    hp = H.parse({})
    assert build_config(hp, ["SKU"], "t", "v", "/tmp/unused", procs_per_host=8).DATALOADER.NUM_WORKERS == 11
    assert build_config(hp, ["SKU"], "t", "v", "/tmp/unused").DATALOADER.NUM_WORKERS == 16
    assert _cfg(num_workers=0).DATALOADER.NUM_WORKERS == 0
    assert _cfg(num_workers=" 5 ").DATALOADER.NUM_WORKERS == 5
    assert _cfg(num_workers="AUTO").DATALOADER.NUM_WORKERS == 16
    for bad in ("-1", "65", "two", "2.5"):
        with pytest.raises(H.HyperparameterError, match="'num-workers': '{}' is not valid: expected auto or".format(bad)):
            H.parse({"num-workers": bad})


def test_available_cpus_honours_affinity(monkeypatch):
    import os

    from shelfdet.core import runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert 1 <= runtime.available_cpus() <= 3
