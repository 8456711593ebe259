"""``python -m shelfdet <command> ...``: the one front door behind the Makefile.

Each command lives in its own module and is imported only when used, so a
launcher command does not pay for importing torch. A command marked ``D2`` runs
Detectron2: this process entry patches the release's differences
(``compat.apply``) before its module, and so Detectron2, is imported.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from shelfdet.core import compat

D2 = True  # the command imports Detectron2

COMMANDS = {
    "data": ("shelfdet.commands.data", "build the dataset (synthetic or SKU-110K) into manifests"),
    "data-stats": ("shelfdet.commands.data_stats", "objects per image and box sizes of a built dataset (docs/data.md's table)"),
    "upload": ("shelfdet.commands.upload", "upload a built dataset to S3"),
    "visualize": ("shelfdet.commands.visualize", "PNGs of ground-truth (and predicted) boxes", D2),
    "train": ("shelfdet.commands.train", "train locally in a SageMaker-shaped run folder, or launch on SageMaker"),
    "tensorboard": ("shelfdet.commands.tensorboard", "TensorBoard over local runs or a SageMaker job's event files"),
    "runs": ("shelfdet.commands.runs:main_runs", "table of local runs (and SageMaker jobs with --remote): AP, count error, time, status"),
    "compare": ("shelfdet.commands.runs:main_compare", "runs' loss and validation curves on one PNG, results.csv per run"),
    "sm-train": ("shelfdet.commands.sm_train", "the SageMaker training entrypoint (inside the image)", D2),
    # serve patches Detectron2 where it is installed, in its loader (the slim image has none).
    "serve": ("shelfdet.commands.serve", "run the SageMaker hosting app"),
    "predict": ("shelfdet.commands.predict", "predict one photo (local model or endpoint)"),
    "evaluate": ("shelfdet.commands.evaluate", "score predictions against a manifest (faster-coco-eval; pycocotools gives the same numbers)", D2),
    "export": ("shelfdet.commands.export", "the model as an OpenVINO, ONNX or TorchScript graph (MODEL_DIR/export/<format>/)", D2),
    "convert-model": ("shelfdet.commands.convert_model", "rewrite an old model folder's .pth weights as safetensors (--trust-pickle)", D2),
    "tune": ("shelfdet.commands.tune", "SageMaker hyperparameter tuning job"),
    "weights": ("shelfdet.commands.weights", "the model zoo's checkpoints into S3, for jobs without network"),
    "deploy": ("shelfdet.commands.deploy", "SageMaker real-time endpoint"),
    "undeploy": ("shelfdet.commands.undeploy", "remove what deploy created"),
    "transform": ("shelfdet.commands.transform", "SageMaker batch transform over the test channel"),
    "push": ("shelfdet.commands.push", "build, tag and push an image to ECR"),
    "bootstrap": ("shelfdet.commands.bootstrap", "once, by an administrator: the CodeBuild role and endpoint scaling's service-linked role"),
    "policy": ("shelfdet.commands.policy", "an IAM policy template of docs/ filled in for this account (stdout)"),
    "preflight": ("shelfdet.commands.preflight", "is every external part of a stack's image build reachable?"),
    "doctor": ("shelfdet.commands.doctor", "Docker, AWS and every stack's external parts, as a table"),
    "hp-table": ("shelfdet.commands.hp_table", "print the hyperparameter table (markdown)"),
    "clean": ("shelfdet.commands.clean", "remove what make data and the runs wrote, by their records (runs/deployments kept)"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: python -m shelfdet <command> [options]", "", "commands:"]
    lines += ["  {}  {}".format(c.ljust(width), row[1]) for c, row in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print("error: unknown command '{}'\n\n{}".format(name, usage()), file=sys.stderr)
        return 2
    target, _help, *marks = COMMANDS[name]
    if D2 in marks:
        compat.apply()
    module, _, function = target.partition(":")
    return int(getattr(importlib.import_module(module), function or "main")(rest) or 0)
