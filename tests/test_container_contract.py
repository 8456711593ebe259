"""The SageMaker container contracts, for real: `docker run IMAGE train` on an
/opt/ml-shaped folder writes the model artefacts; `docker run IMAGE serve` on
that model answers /ping and /invocations over HTTP and stops on SIGTERM.

Needs a Docker daemon and the cpu images (`make test` builds them and sets
SHELFDET_TRAINING_IMAGE / SHELFDET_SERVING_IMAGE; or `make build STACK=cpu`).
Skips, saying why, when either is missing."""
from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from _container_support import (NO_DOCKER, TINY, docker_answers, docker_run, http, image, jpeg, lay_out_opt_ml,
                                 scene, serving_container)


pytestmark = pytest.mark.skipif(not docker_answers(), reason=NO_DOCKER)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    training = image("training")
    ml = tmp_path_factory.mktemp("opt_ml")
    lay_out_opt_ml(ml, TINY)
    t0 = time.time()
    out = docker_run(training, ml, "train")
    took = time.time() - t0
    print("docker run {} train: exit {} in {:.1f} s".format(training, out.returncode, took))
    assert out.returncode == 0, "train failed:\n{}\n{}".format(out.stdout[-4000:], out.stderr[-4000:])
    return ml


def test_train_writes_the_model_artefacts(trained):
    model = trained / "model"
    assert (model / "artefacts.json").is_file(), sorted(p.name for p in model.iterdir())
    # Read on the host by the same reader serving uses: every file it names exists.
    from shelfdet.core import artefacts

    art = artefacts.read(str(model))
    assert art.model_type == "faster_rcnn" and art.class_names == ["SKU"], art.manifest
    names = art.manifest["files"]
    assert {"weights", "config", "metrics"} <= set(names), names
    # The weights are safetensors, and no pickle sits in the folder that becomes model.tar.gz.
    assert names["weights"] == artefacts.WEIGHTS == "model_final.safetensors", names
    assert not [p.name for p in model.rglob("*") if p.suffix in (".pth", ".pkl")], sorted(p.name for p in model.iterdir())
    for role, name in names.items():
        assert (model / name).is_file() and (model / name).stat().st_size > 0, (role, name)
    assert (model / names["weights"]).stat().st_size > 1_000_000, "weights file too small to be a model"
    metrics = json.loads((model / names["metrics"]).read_text())
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["iterations"] == int(TINY["num-iter"]), metrics
    assert not (trained / "output" / "failure").exists() or not (trained / "output" / "failure").read_text().strip()
    assert list((trained / "checkpoints").iterdir()), "no checkpoints written to /opt/ml/checkpoints"


class _RunsCode:
    """Unpickled, it creates ``marker`` (a hostile model file would run a shell command instead)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["pth", "disguised"])
def test_serve_never_unpickles_the_model_folder(trained, tmp_path, kind):
    """The serving image (torch 1.13, whose torch.load unpickles anything by default) on a model folder
    whose weights would run code when unpickled: an old folder naming model_final.pth stops it with the one
    line naming convert-model; a pickle under the safetensors name fails to load, saying so. Neither runs."""
    import shutil

    import torch

    from shelfdet.core import artefacts

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(str(trained / "model"), str(model))
    out.mkdir()
    out.chmod(0o777)  # the server runs as uid 1000: the code, if it ran, could write its marker
    hostile = _RunsCode("/opt/ml/out/ran")
    manifest = json.loads((model / artefacts.MANIFEST).read_text())
    if kind == "pth":
        (model / artefacts.WEIGHTS).unlink()
        torch.save({"model": hostile}, str(model / artefacts.LEGACY_WEIGHTS))
        manifest.update(format=artefacts.LEGACY_FORMAT, files=dict(manifest["files"], weights=artefacts.LEGACY_WEIGHTS))
        (model / artefacts.MANIFEST).write_text(json.dumps(manifest))
    else:
        torch.save({"model": hostile}, str(model / artefacts.WEIGHTS))
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", "{}:/opt/ml/model:ro".format(model),
                          "-v", "{}:/opt/ml/out".format(out), image("serving"), "serve"],
                         capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert not (out / "ran").exists(), "the model folder's pickle ran in the serving container"
    if kind == "pth":
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert run.returncode == 2 and len(errors) == 1, log[-3000:]
        assert "holds its weights as a pickle (model_final.pth)" in errors[0] and "convert-model" in errors[0], errors
    else:
        assert run.returncode != 0 and "is not a safetensors weights file shelfdet can read" in log, log[-3000:]


def test_train_failure_is_reported(tmp_path):
    lay_out_opt_ml(tmp_path, dict(TINY, **{"num-iter": "many"}))
    out = docker_run(image("training"), tmp_path, "train", timeout=300)
    assert out.returncode != 0
    failure = tmp_path / "output" / "failure"
    assert failure.is_file() and "num-iter" in failure.read_text(), out.stderr[-2000:]


def test_train_without_network_reads_zoo_weights_from_the_channel_and_caches_in_the_warm_pool(tmp_path):
    """NETWORK_ISOLATION=1 as SageMaker runs it (no network at all) with the `pretrained` channel mounted,
    and KEEP_ALIVE's cache folder: the image trains from the channel's zoo file, caches land in the pool."""
    lay_out_opt_ml(tmp_path, dict(TINY, **{"backbone": "R_50_FPN", "weights": "zoo", "num-iter": 2, "lr": "0.0001"}))
    # The zoo's own format (a pickle of numpy arrays with an author), written by the image's own numpy
    # and Detectron2: a pickle from the host's numpy 2 does not load in numpy 1.
    script = ("import dataclasses, json, pickle, os; from shelfdet.core import compat; compat.apply(); "
              "from shelfdet.core import hyperparameters as table; "
              "from shelfdet.core.config import build_config, zoo_key, zoo_weights; "
              "from detectron2.modeling import build_model; "
              "hp = table.parse(json.load(open('/opt/ml/input/config/hyperparameters.json'))); "
              "cfg = build_config(dataclasses.replace(hp, weights='none'), ['SKU'], 't', 'v', '/tmp'); "
              "p = '/opt/ml/input/data/pretrained/' + zoo_key(zoo_weights(hp.model_type, hp.backbone, hp.lr_schedule)); "
              "os.makedirs(os.path.dirname(p)); "
              "pickle.dump({'model': {k: v.numpy() for k, v in build_model(cfg).state_dict().items()}, "
              "'__author__': 'shelfdet test'}, open(p, 'wb')); print(p)")
    made = docker_run(image("training"), tmp_path, "-c", script, docker_args=["--entrypoint", "python"])
    assert made.returncode == 0, made.stderr[-3000:]
    inside = made.stdout.strip().splitlines()[-1]
    (tmp_path / "warmpool").mkdir()
    out = docker_run(image("training"), tmp_path, "train", docker_args=["--network", "none"],
                     env={"SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY": "/opt/ml/warmpool"})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "weights=zoo read from the pretrained channel: {}".format(inside) in log, log[-3000:]
    assert "Reading a file from 'shelfdet test'" in log  # Detectron2 loaded the channel's file
    assert "warm pool: download caches (model zoo weights, torch, pip) kept in /opt/ml/warmpool" in log
    assert sorted(p.name for p in (tmp_path / "warmpool" / "shelfdet").iterdir()) == ["fvcore", "pip", "torch", "xdg"]
    assert (tmp_path / "model" / "artefacts.json").is_file()


def test_serve_answers_ping_and_invocations(trained):
    name = "shelfdet-test-serve-{}".format(os.getpid())
    with serving_container(image("serving"), trained / "model", name) as base:
        img, _ = scene(np.random.default_rng(7))
        status, body = http(base + "/invocations", data=jpeg(img),
                            headers={"Content-Type": "application/x-image", "Accept": "application/json"})
        assert status == 200, body[:1000]
        pred = json.loads(body)
        pred = pred[0] if isinstance(pred, list) else pred
        for key in ("image_height", "image_width", "pred_boxes", "scores", "pred_classes"):
            assert key in pred, (key, sorted(pred))
        assert (pred["image_height"], pred["image_width"]) == img.shape[:2]

        status, body = http(base + "/invocations", data=b"not an image",
                            headers={"Content-Type": "application/x-image"})
        assert 400 <= status < 500, (status, body[:500])

        # The image's own HEALTHCHECK command, and its non-root user.
        assert subprocess.run(["docker", "exec", name, "healthcheck"], capture_output=True).returncode == 0
        uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert uid and uid != "0", uid

        # SIGTERM (what SageMaker and `docker stop` send) ends it cleanly: past -t, docker would SIGKILL (137).
        subprocess.run(["docker", "stop", "-t", "120", name], capture_output=True, check=True)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True).stdout.strip()
        assert code == "0", "exit code {} after SIGTERM".format(code)
