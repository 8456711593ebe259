"""Metric lines the training log prints, the regexes SageMaker scrapes them with, and a run's results.

The launcher sends METRIC_DEFINITIONS; a test runs a real training and checks
each regex against its log. Numbers may be printed in exponent form by
Detectron2's printer, hence the optional exponent.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

NUMBER = r"([0-9\.]+(?:e[-+]?[0-9]+)?)"
TRAIN_LOSSES = ("loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")


def _defs() -> List[Dict[str, str]]:
    defs = [{"Name": "training:loss", "Regex": "total_loss: " + NUMBER}]
    # The leading space keeps "loss_cls" from matching inside "val_loss_cls".
    defs += [{"Name": "training:" + n, "Regex": " " + n + ": " + NUMBER} for n in TRAIN_LOSSES]
    defs.append({"Name": "validation:loss", "Regex": "total_val_loss: " + NUMBER})
    defs += [{"Name": "validation:" + n, "Regex": "val_" + n + ": " + NUMBER} for n in TRAIN_LOSSES]
    defs.append({"Name": "validation:ap", "Regex": "validation_ap: " + NUMBER})
    defs.append({"Name": "test:ap", "Regex": "test_ap: " + NUMBER})
    defs += [{"Name": c + ":ap50", "Regex": c + "_ap50: " + NUMBER} for c in ("validation", "test")]
    # Count error per image at the count threshold, fit on validation (the final evaluation's log lines).
    for channel in ("validation", "test"):
        defs += [{"Name": channel + ":" + n, "Regex": channel + "_" + n + ": " + NUMBER}
                 for n in ("count_mae", "count_rel_error")]
    return defs


METRIC_DEFINITIONS: List[Dict[str, str]] = _defs()


def format_validation(losses: Dict[str, float]) -> str:
    """The validation-loss log line: ``total_val_loss: x  val_loss_cls: x ...``."""
    total = sum(losses.values())
    parts = ["total_val_loss: {:.6f}".format(total)]
    parts += ["val_{}: {:.6f}".format(k, v) for k, v in sorted(losses.items())]
    return "  ".join(parts)


# A run folder is laid out as SageMaker's /opt/ml: what it was asked, and its final evaluation.
# A run folder's files (the SageMaker layout), read by read_run, `make runs` and a resumed `make train`.
RUN_HYPERPARAMETERS = os.path.join("input", "config", "hyperparameters.json")
RUN_FINAL_METRICS = os.path.join("model", "metrics.json")
RUN_COMPLETE = os.path.join("model", "artefacts.json")


def read_json(path: str) -> Dict[str, Any]:
    """The file's JSON object, or {} while it is missing or half-written (a run still training)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def read_run(run_dir: str) -> Dict[str, Any]:
    """A run's results: ``run``, ``algorithm``, ``complete`` and, once complete, its final evaluation
    (``AP``, ``AP50``, ``AP75``, ``AR``, ``count_mae``, ``iterations``, ``train_seconds``, ... as in
    ``model/metrics.json``). A run that has not finished has no evaluation: ``complete`` is False."""
    complete = os.path.isfile(os.path.join(run_dir, RUN_COMPLETE))
    result: Dict[str, Any] = {"run": os.path.basename(os.path.normpath(run_dir)),
                              "algorithm": read_json(os.path.join(run_dir, RUN_HYPERPARAMETERS)).get("model-type"),
                              "complete": complete}
    if complete:
        result.update(read_json(os.path.join(run_dir, RUN_FINAL_METRICS)))
    return result
