"""The training container in a locked-down account (issue 23): weights=zoo read from the `pretrained`
channel instead of downloaded, and the download caches kept in a warm pool's folder. Real training."""
from __future__ import annotations

import dataclasses
import json
import pickle

from conftest import make_ml_root, run_train
from shelfdet.core import hyperparameters


def _hp(root):
    return hyperparameters.parse(json.loads((root / "input" / "config" / "hyperparameters.json").read_text()))


def _zoo_file(root, hp):
    from shelfdet.core.config import zoo_key, zoo_weights

    return root / "input" / "data" / "pretrained" / zoo_key(zoo_weights(hp.model_type, hp.backbone, hp.lr_schedule))


def zoo_checkpoint(root, tmp_path):
    """A checkpoint in the zoo's own format (a pickle of numpy arrays with an author) of the run's very
    model, where the `pretrained` channel of /opt/ml-shaped ``root`` has it; returns its path."""
    hp = _hp(root)
    from detectron2.modeling import build_model

    from shelfdet.core.config import build_config

    cfg = build_config(dataclasses.replace(hp, weights="none"), ["SKU"], "train", "val", str(tmp_path))
    state = {k: v.detach().numpy() for k, v in build_model(cfg).state_dict().items()}
    path = _zoo_file(root, hp)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "shelfdet test"}, f)
    return path


def test_zoo_weights_come_from_the_pretrained_channel_and_caches_from_the_warm_pool(tmp_path, tiny_dataset):
    root = make_ml_root(tmp_path / "job", tiny_dataset, backbone="R_50_FPN", weights="zoo", num_iter="2", lr="0.0001",
                        eval_period="0", checkpoint_period="2")
    path = zoo_checkpoint(root, tmp_path)
    warm = tmp_path / "warm-pool"
    warm.mkdir()

    proc = run_train(root, env={"SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY": str(warm)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "weights=zoo read from the pretrained channel: {}".format(path) in log
    assert "Reading a file from 'shelfdet test'" in log  # Detectron2 loaded the channel's file
    assert "warm pool: download caches (model zoo weights, torch, pip) kept in {}".format(warm) in log
    assert sorted(p.name for p in (warm / "shelfdet").iterdir()) == ["fvcore", "pip", "torch", "xdg"]
    assert (root / "model" / "artefacts.json").is_file()


def test_a_pretrained_channel_without_the_checkpoint_is_one_line(tmp_path, tiny_dataset):
    root = make_ml_root(tmp_path / "job", tiny_dataset, backbone="R_50_FPN", weights="zoo")
    (root / "input" / "data" / "pretrained").mkdir()
    proc = run_train(root)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "{} is not in it: run `make weights ALGO=faster_rcnn`".format(_zoo_file(root, _hp(root))) in errors[0]
    assert "Traceback" not in proc.stderr
