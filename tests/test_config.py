"""Hyperparameters -> Detectron2 config: the choices the reference got wrong."""
from __future__ import annotations

import pytest

from shelfdet import hyperparameters as H
from shelfdet.config import ConfigError, build_config


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


def test_readme_documents_the_current_hyperparameter_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert H.markdown_table() in readme, "README's table is stale: paste `python -m shelfdet hp-table`"
