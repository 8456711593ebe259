"""Validation during training: kept out of the training metrics, scored like the final evaluation."""
from __future__ import annotations

import json
import os
import shutil

from conftest import make_ml_root, run_train
from shelfdet.core import hyperparameters


def test_validation_records_nothing_into_the_training_metrics(tiny_dataset, tmp_path):
    from shelfdet.core.config import build_config
    from shelfdet.training import entry
    from shelfdet.training.environment import load
    from shelfdet.training.trainer import Trainer

    root = make_ml_root(tmp_path / "job", tiny_dataset, num_iter="3", eval_period="1", val_ap="true",
                        dataset_name="shelf-validation-storage")
    env = load(str(root))
    hp = hyperparameters.parse(env.hyperparameters)
    reg = entry._register(env, hp)
    cfg = build_config(hp, reg["classes"], reg["names"]["training"], reg["names"]["validation"], env.checkpoint_dir)
    cfg.freeze()
    trainer = Trainer(cfg, reg["classes"], reg["val"][:2], reg["val"], log_period=1)
    trainer.train()
    # The model records these on every training forward; validation runs the same
    # forward (losses) and inference (AP) at every iteration here.
    for name in ("fast_rcnn/cls_accuracy", "roi_head/num_fg_samples", "rpn/num_pos_anchors"):
        iters = [it for _, it in trainer.storage.history(name).values()]
        assert iters == [0, 1, 2], (name, iters)
    assert [h["iteration"] for h in trainer.validation.history] == [1, 2, 3]
    assert [h["iteration"] for h in trainer.validation_ap.history] == [1, 2, 3]


def _with_one_larger_validation_image(src, dst):
    """A copy of the dataset whose first validation image sits on a larger canvas:
    images of two sizes are what batch padding would score differently."""
    from PIL import Image

    shutil.copytree(src, dst)
    manifest = dst / "annotations" / "validation.manifest"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    first = dst / "validation" / os.path.basename(rows[0]["source-ref"])
    small = Image.open(first)
    canvas = Image.new("RGB", (small.width * 2, small.height), (128, 128, 128))
    canvas.paste(small, (0, 0))  # boxes keep their coordinates
    canvas.save(first, quality=95)
    rows[0]["sku"]["image_size"] = [{"width": canvas.width, "height": canvas.height, "depth": 3}]
    for r in rows:
        r["source-ref"] = str(dst / "validation" / os.path.basename(r["source-ref"]))
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def test_validation_ap_is_the_final_evaluation_on_the_same_images(tiny_dataset, tmp_path):
    data = _with_one_larger_validation_image(tiny_dataset, tmp_path / "data")
    root = make_ml_root(tmp_path / "job", data, val_ap="true", evaluation_type="coco", num_iter="40", eval_period="40")
    os.unlink(root / "input" / "data" / "test")  # the final evaluation then scores the validation channel
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["eval_channel"] == "validation"
    # In memory at the last iteration vs. rebuilt from the saved model folder: one inference path.
    assert metrics["AP"] > 0.0 and metrics["validation_ap"] == metrics["AP"], metrics
