"""Loading a model is exact, on every Detectron2 release the stacks pin.

A checkpoint tensor with no place in the model, a model tensor the checkpoint
lacks, a config key this Detectron2 does not know: each fails with one line
that names it, and the server keeps /ping at 503 saying why.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from detectron2.modeling import build_model

from _serving_support import make_tiny_model
from conftest import free_port, wait_for_port
from shelfdet.core import artefacts, compat, hyperparameters, safeweights
from shelfdet.core.checkpoint import CheckpointMismatch, Checkpointer, load_exact
from shelfdet.core.config import ConfigError, _set, build_config
from shelfdet.core.inference import Detector, load_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return Path(make_tiny_model(tmp_path_factory.getbasetemp()))


def _copy_with_state(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(str(src), str(dst))
    weights = dst / artefacts.WEIGHTS
    state = safeweights.load(str(weights))
    edit(state)
    safeweights.save(state, str(weights))
    return dst


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_the_saved_model_loads_exactly(model_dir):
    det = Detector.from_model_dir(str(model_dir), "cpu")
    saved = safeweights.load(str(model_dir / artefacts.WEIGHTS))
    own = det.model.state_dict()
    assert set(saved) == set(own)
    for key, value in saved.items():
        assert torch.equal(own[key], value) and own[key].dtype == value.dtype, key


KINDS = {"missing": "model tensor(s) not in the checkpoint",
         "unexpected": "checkpoint tensor(s) the model has no place for",
         "reshaped": "with another shape"}
MISSING = "roi_heads.box_predictor.cls_score.weight"
EXTRA = "roi_heads.extra_head.weight"
RESHAPED = "roi_heads.box_predictor.bbox_pred.bias"


def _break(state, kinds):
    if "missing" in kinds:
        state.pop(MISSING)
    if "unexpected" in kinds:
        state[EXTRA] = torch.zeros(3)
    if "reshaped" in kinds:
        state[RESHAPED] = torch.zeros(7)


def _assert_names_each_kind(err: BaseException, kinds) -> None:
    """One line naming each broken tensor once, under its own kind, and no other kind."""
    msg = _one_line(err)
    named = {"missing": MISSING, "unexpected": EXTRA, "reshaped": RESHAPED}
    for kind, phrase in KINDS.items():
        if kind in kinds:
            assert "1 {} ({})".format(phrase, named[kind]) in msg, msg
        else:
            assert phrase not in msg, msg


# Each kind alone too: together, the checks left would still fail a case whose own check was removed.
BROKEN = [("missing",), ("unexpected",), ("reshaped",), ("missing", "unexpected", "reshaped")]


@pytest.mark.parametrize("kinds", BROKEN, ids="+".join)
def test_load_exact_fails_naming_the_tensor_and_its_kind(model_dir, tmp_path, kinds):
    broken = _copy_with_state(model_dir, tmp_path / "m", lambda s: _break(s, kinds))
    with pytest.raises(CheckpointMismatch) as err:
        Detector.from_model_dir(str(broken), "cpu")
    _assert_names_each_kind(err.value, kinds)


@pytest.mark.parametrize("kinds", BROKEN, ids="+".join)
def test_resume_fails_naming_the_tensor_and_its_kind(model_dir, tmp_path, kinds):
    model = build_model(load_config(str(model_dir / artefacts.CONFIG), "cpu"))
    state = safeweights.load(str(model_dir / artefacts.WEIGHTS))
    _break(state, kinds)
    torch.save({"model": state, "iteration": 3}, str(tmp_path / "model_0000003.pth"))
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(CheckpointMismatch) as err:
        Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    _assert_names_each_kind(err.value, kinds)
    assert str(tmp_path) in str(err.value)


def test_resume_from_the_run_s_own_checkpoint_loads_it(model_dir, tmp_path):
    model = build_model(load_config(str(model_dir / artefacts.CONFIG), "cpu"))
    saved = safeweights.load(str(model_dir / artefacts.WEIGHTS))
    torch.save({"model": dict(saved), "iteration": 3}, str(tmp_path / "model_0000003.pth"))
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    assert Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)["iteration"] == 3
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())


def test_config_buffers_saved_by_older_releases_must_agree_with_the_config(model_dir, tmp_path):
    # v0.4.1 saves pixel_mean/pixel_std in checkpoints; 0.6 rebuilds them from the config.
    cfg = load_config(str(model_dir / artefacts.CONFIG), "cpu")
    same = _copy_with_state(model_dir, tmp_path / "same", lambda s: s.update(
        pixel_mean=torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1),
        pixel_std=torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)))
    Detector.from_model_dir(str(same), "cpu")
    other = _copy_with_state(model_dir, tmp_path / "other", lambda s: s.update(
        pixel_mean=torch.tensor([1.0, 2.0, 3.0]).view(-1, 1, 1)))
    with pytest.raises(CheckpointMismatch, match="pixel_mean .* differs from the config"):
        Detector.from_model_dir(str(other), "cpu")


def test_a_weights_file_that_is_not_safetensors_fails_clearly_and_is_never_unpickled(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, str(path))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    with pytest.raises(artefacts.ArtefactError) as err:
        load_exact(torch.nn.Linear(2, 2), str(path))
    assert _one_line(err.value).startswith("{} is not a safetensors weights file shelfdet can read (".format(path))
    assert not unpickled


def test_weights_are_readable_by_the_serving_user_and_an_unreadable_file_says_why(tmp_path):
    """safetensors 0.8 creates its file 0600; the serving image runs as uid 1000, not training's root."""
    import os
    import stat

    path = tmp_path / "w.safetensors"
    safeweights.save({"a": torch.ones(3)}, str(path))
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(artefacts.ArtefactError, match="cannot read weights file .*gone.safetensors"):
        safeweights.load(str(missing))


def test_half_and_bfloat16_tensors_are_kept_exactly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].half()
    model[1].to(torch.bfloat16)
    safeweights.save(model.state_dict(), str(tmp_path / "w.safetensors"))
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other[0].half()
    other[1].to(torch.bfloat16)
    load_exact(other, str(tmp_path / "w.safetensors"))
    for (key, mine), theirs in zip(model.state_dict().items(), other.state_dict().values()):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), key


def test_resume_from_a_checkpoint_of_another_model_fails(tmp_path):
    hp = hyperparameters.parse({"model-type": "faster_rcnn"}, profile="local")
    cfg = build_config(hp, ["SKU"], "t", None, str(tmp_path))
    model = build_model(cfg)
    state = model.state_dict()
    state.pop("proposal_generator.rpn_head.conv.weight")
    torch.save({"model": state, "iteration": 3}, str(tmp_path / "model_0000003.pth"))
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(CheckpointMismatch, match=r"not in the checkpoint \(proposal_generator.rpn_head.conv.weight\)"):
        Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    # Initial weights (no checkpoint of ours to resume) keep Detectron2's lenient matching.
    (tmp_path / "last_checkpoint").unlink()
    Checkpointer(model, str(tmp_path)).resume_or_load(str(tmp_path / "model_0000003.pth"), resume=True)


def test_a_model_folder_s_safetensors_serve_as_initial_weights_without_unpickling(model_dir, tmp_path, monkeypatch):
    model = build_model(load_config(str(model_dir / artefacts.CONFIG), "cpu"))
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    Checkpointer(model, str(tmp_path)).resume_or_load(str(model_dir / artefacts.WEIGHTS), resume=True)
    saved = safeweights.load(str(model_dir / artefacts.WEIGHTS))
    own = model.state_dict()
    assert not unpickled and set(saved) == set(own)
    assert all(torch.equal(own[k], v) for k, v in saved.items())


def _saved_config(model_dir: Path, tmp_path: Path, extra: dict) -> Path:
    data = yaml.safe_load((model_dir / artefacts.CONFIG).read_text())
    for key, value in extra.items():
        node = data
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_config_key_this_detectron2_lacks_is_an_error_unless_left_at_its_default(model_dir, tmp_path):
    path = _saved_config(model_dir, tmp_path, {"MODEL.ROI_BOX_HEAD.USE_FUTURE_LOSS": True})
    # Not recorded which keys the model changed: every unknown key is an error.
    with pytest.raises(compat.UnknownConfigKey, match="no config key.*MODEL.ROI_BOX_HEAD.USE_FUTURE_LOSS"):
        load_config(str(path), "cpu")
    # Changed by the model: an error, naming the key.
    with pytest.raises(compat.UnknownConfigKey) as err:
        load_config(str(path), "cpu", changed_keys=["MODEL.ROI_BOX_HEAD.USE_FUTURE_LOSS"])
    assert "serve this model on the stack that trained it" in _one_line(err.value)
    # Left at its release's default (a newer Detectron2's new key): skipped, the rest merged.
    cfg = load_config(str(path), "cpu", changed_keys=["MODEL.ROI_HEADS.NUM_CLASSES"])
    assert "USE_FUTURE_LOSS" not in cfg.MODEL.ROI_BOX_HEAD
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1


def test_saved_values_are_kept_exactly_and_spellings_translated(model_dir, tmp_path):
    path = _saved_config(model_dir, tmp_path, {"MODEL.RPN.NMS_THRESH": 0.55, "SOLVER.WEIGHT_DECAY_BIAS": None,
                                               "SOLVER.WEIGHT_DECAY": 0.0003})
    cfg = load_config(str(path), "cpu", changed_keys=[])
    assert cfg.MODEL.RPN.NMS_THRESH == 0.55
    # 0.6 writes None for "same as WEIGHT_DECAY"; releases with a float default get that number.
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS in (None, 0.0003)


def test_set_never_skips_a_requested_value():
    hp = hyperparameters.parse({}, profile="local")
    cfg = build_config(hp, ["SKU"], "t", None, "/tmp/unused")
    for value in (True, 1.0, False, "smooth_l1"):  # True == 1.0 once let a requested AMP be skipped
        with pytest.raises(ConfigError, match="no config key SOLVER.NO_SUCH_KEY"):
            _set(cfg, "SOLVER.NO_SUCH_KEY", value)
    _set(cfg, "SOLVER.AMP.ENABLED", True)
    assert cfg.SOLVER.AMP.ENABLED is True


def _bn_count(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.mark.parametrize("d2_opts", ["", "MODEL.META_ARCHITECTURE RetinaNet MODEL.RETINANET.NORM BN"])
def test_retinanet_from_scratch_has_one_bn_per_pyramid_level(d2_opts):
    hp = hyperparameters.parse({"model-type": "retinanet", "d2-opts": d2_opts}, profile="local")
    cfg = build_config(hp, ["SKU"], "t", None, "/tmp/unused")
    assert cfg.MODEL.META_ARCHITECTURE == "LevelNormRetinaNet" and cfg.MODEL.RETINANET.NORM == "BN"
    model = build_model(cfg)
    levels = len(cfg.MODEL.RETINANET.IN_FEATURES)
    assert levels == 5
    assert _bn_count(model.head) == 2 * cfg.MODEL.RETINANET.NUM_CONVS * levels
    # Each level's statistics move only with that level's features.
    model.train()
    feats = [torch.randn(2, cfg.MODEL.FPN.OUT_CHANNELS, 4, 4) * (i + 1) + i for i in range(levels)]
    model.head(feats)
    means = [model.head.cls_norms[0][i].running_mean.abs().mean().item() for i in range(levels)]
    assert len(set(round(m, 6) for m in means)) == levels, means


def test_pretrained_retinanet_keeps_the_zoo_head():
    hp = hyperparameters.parse({"model-type": "retinanet", "backbone": "R_50_FPN", "weights": "zoo"})
    cfg = build_config(hp, ["SKU"], "t", None, "/tmp/unused")
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.RETINANET.NORM == ""


def test_serving_a_mismatched_checkpoint_keeps_ping_at_503_and_says_why(model_dir, tmp_path):
    import uvicorn

    from shelfdet.serving import limits
    from shelfdet.serving.app import create_app

    broken = _copy_with_state(model_dir, tmp_path / "m", lambda s: s.pop("backbone.fpn_output2.weight"))
    reported = []
    port = free_port()
    app = create_app(str(broken), device="cpu", settings=limits.settings_from_env({}), on_load_error=reported.append)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        deadline = time.time() + 60
        while not reported:
            assert time.time() < deadline, "the load error was never reported"
            time.sleep(0.05)
        r = httpx.get("http://127.0.0.1:{}/ping".format(port))
        assert r.status_code == 503 and "backbone.fpn_output2.weight" in r.json()["error"], r.text
        r = httpx.post("http://127.0.0.1:{}/invocations".format(port), content=b"x",
                       headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503
    finally:
        server.should_exit = True
        thread.join(30)
    assert "backbone.fpn_output2.weight" in reported[0] and "\n" not in reported[0]
