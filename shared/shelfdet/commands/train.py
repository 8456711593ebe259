"""``make train``: the SageMaker training program run locally in a SageMaker-shaped folder.

``runs/<job>/`` mirrors /opt/ml (input/config, input/data/<channel>, model,
checkpoints, output), so the local run and the training image execute the
same code on the same layout. With ``--instance-type`` the job goes to
SageMaker instead (``shelfdet.commands.launch_train``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

from shelfdet.core import compat, hyperparameters
from shelfdet.commands import launching
from shelfdet.core import CHANNELS
from shelfdet.core.hyperparameters import Hyperparameters
from shelfdet.core.metrics import RUN_HYPERPARAMETERS


HP_FILE = RUN_HYPERPARAMETERS


def resumed_hyperparameters(run_dir: str, saved_file: str, given: Dict[str, str]) -> Hyperparameters:
    """The run's own hyperparameters; ALGO/HP/WEIGHTS given again must agree with them.

    A resume that silently took today's defaults would train a RetinaNet
    checkpoint as Faster R-CNN, or stop a 500-iteration run at 120 and call
    mid-run weights final.
    """
    with open(saved_file) as f:
        saved = json.load(f)
    hp = hyperparameters.parse(dict(saved, **given))
    own = hyperparameters.parse(saved)
    now = hyperparameters.as_strings(hp)
    source = {"model-type": "ALGO", "weights": "WEIGHTS"}
    differ = []
    for key in sorted(k.replace("_", "-") for k in given):
        # The values, not their spelling: a run saved before its string form was normalised agrees too.
        same = (hyperparameters.value(hp, key) == hyperparameters.value(own, key)
                if key in saved and key in hyperparameters.BY_NAME
                else now.get(key) == saved.get(key))
        if not same:
            differ.append("{} {} is {} in the run".format(source.get(key, "HP --" + key), now.get(key, "(none)"),
                                                          saved.get(key, "(none)")))
    if differ:
        raise hyperparameters.HyperparameterError(
            "{} resumes with its own hyperparameters ({}): leave out ALGO/HP/WEIGHTS or give the run's values; {}"
            .format(run_dir, saved_file, "; ".join(differ)))
    return hp


class ResumeError(ValueError):
    """A resumed run given inputs other than its own."""


def run_data_dir(run_dir: str) -> Optional[str]:
    """The dataset folder the run's channel links point into; None before the first lay-out."""
    link = os.path.join(run_dir, "input", "data", "annotation")
    return os.path.dirname(os.readlink(link)) if os.path.islink(link) else None


def resumed_data_dir(run_dir: str, given: Optional[str]) -> Optional[str]:
    """The run's own dataset folder; DATA_DIR given again must be that folder.

    lay_out keeps the links a run has, so another DATA_DIR would be generated
    (or checked) and then not trained on. A dataset gone from the run's folder
    is not generated again either: the new set need not be the one it started on.
    """
    own = run_data_dir(run_dir)
    if own is None:
        return given
    if given is not None and os.path.realpath(given) != os.path.realpath(own):
        raise ResumeError("{} resumes with its own data ({}): leave out DATA_DIR or give the run's; "
                          "DATA_DIR {} is not the run's {}".format(run_dir, os.path.join(run_dir, "input", "data"),
                                                                given, own))
    if not os.path.isfile(os.path.join(own, "report.json")):
        raise ResumeError("{} resumes with its own data, but {} has no dataset now (no report.json): "
                          "rebuild it there with make data DATA_DIR={} and the options it was built with".format(
                              run_dir, own, own))
    return own


def ensure_data(data_dir: str) -> None:
    if os.path.isfile(os.path.join(data_dir, "report.json")):
        return
    print("[train] no dataset in {}: generating the synthetic SKU-110K set (make data)".format(data_dir), flush=True)
    from shelfdet.commands import data

    rc = data.main(["--data-dir", data_dir])
    if rc:
        raise SystemExit(rc)


def lay_out(run_dir: str, data_dir: str, hps: Dict[str, str]) -> None:
    """Creates the /opt/ml-shaped run folder; channels are links to the dataset."""
    config = os.path.join(run_dir, "input", "config")
    data = os.path.join(run_dir, "input", "data")
    for d in (config, data, os.path.join(run_dir, "model"), os.path.join(run_dir, "checkpoints"),
              os.path.join(run_dir, "output")):
        os.makedirs(d, exist_ok=True)
    links = {c: os.path.join(data_dir, c) for c in CHANNELS if os.path.isdir(os.path.join(data_dir, c))}
    links["annotation"] = os.path.join(data_dir, "annotations")
    for channel, target in links.items():
        link = os.path.join(data, channel)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(target), link)
    hp_file = os.path.join(run_dir, HP_FILE)
    if not os.path.isfile(hp_file):  # a resumed run keeps the file it started with
        with open(hp_file, "w") as f:
            json.dump(hps, f, indent=2, sort_keys=True)
    with open(os.path.join(config, "inputdataconfig.json"), "w") as f:
        json.dump({c: {"ContentType": "application/x-image" if c != "annotation" else "application/json",
                       "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for c in links}, f, indent=2)
    with open(os.path.join(config, "resourceconfig.json"), "w") as f:
        json.dump({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"}, f, indent=2)


def report_line(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--instance-type" in argv:
        from shelfdet.commands import launch_train as remote

        return int(remote.main(argv) or 0)
    own, hp_args = launching.split_hp(argv)
    ap = argparse.ArgumentParser(prog="shelfdet train", description=__doc__)
    ap.add_argument("--algo", default=None, choices=hyperparameters.ALGORITHMS,
                    help="faster_rcnn (default for a new run) or retinanet; a resumed run keeps its own")
    ap.add_argument("--data-dir", default=None,
                    help="dataset folder (default: data); a resumed run trains on its own and refuses another")
    ap.add_argument("--weights", default=None, help="initial weights file (.pth/.pkl); default: from scratch")
    ap.add_argument("--run-dir", default=None,
                    help="an existing run folder resumes from its checkpoints with its own hyperparameters")
    ap.add_argument("--runs", default="runs", help="parent of new run folders")
    args, unknown = ap.parse_known_args(own)
    if unknown:
        print("error: unknown option(s) {}; hyperparameters go after '--' (make train HP='--lr 0.01')".format(
            " ".join(unknown)), file=sys.stderr)
        return 2
    saved_file = os.path.join(args.run_dir, HP_FILE) if args.run_dir else None
    try:
        given = hyperparameters.parse_cli(hp_args)
        if args.algo:
            given["model-type"] = args.algo
        if args.weights:
            if not os.path.isfile(args.weights):
                raise hyperparameters.HyperparameterError("WEIGHTS file not found: {}".format(args.weights))
            given["weights"] = os.path.abspath(args.weights)
        if saved_file and os.path.isfile(saved_file):
            hp = resumed_hyperparameters(args.run_dir, saved_file, given)
        else:
            given.setdefault("model-type", "faster_rcnn")
            hp = hyperparameters.parse(given, profile="local")
        # Before anything is generated or written: a refused call leaves the run as it was.
        data_dir = (resumed_data_dir(args.run_dir, args.data_dir) if args.run_dir else args.data_dir) or "data"
    except (hyperparameters.HyperparameterError, ResumeError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    resolved = hyperparameters.as_strings(hp)

    ensure_data(data_dir)
    if args.run_dir:
        run_dir = args.run_dir
        print("[train] {} {}".format("resuming" if os.path.isfile(saved_file) else "new run in", run_dir), flush=True)
    else:
        job = "detectron2-{}-{}".format(hp.model_type.replace("_", "-"), time.strftime("%Y%m%d-%H%M%S"))
        run_dir = os.path.join(args.runs, job)
    lay_out(run_dir, data_dir, resolved)
    print("[train] run folder {} (SageMaker layout); hyperparameters in input/config/hyperparameters.json".format(run_dir),
          flush=True)

    # This process trains from here on: Detectron2's release differences patched before it is imported
    # (here, not at the top: with --instance-type the command only launches, without torch).
    compat.apply()
    from shelfdet.training import entry

    start = time.time()
    rc = entry.run(run_dir, report_line)
    if rc:
        return rc
    with open(os.path.join(run_dir, "model", "metrics.json")) as f:
        m = json.load(f)
    print("")
    print("[train] done in {:.1f} min: {} {} on {} ({} images)".format(
        (time.time() - start) / 60, hp.model_type, hp.backbone, m.get("eval_channel"), m.get("eval_images")))
    if "AP" in m:
        print("[train] AP {AP:.4f}  AP50 {AP50:.4f}  AP75 {AP75:.4f}  AR{max_dets} {AR:.4f}".format(**m))
    print("[train] model: {}/model   plots: {}/model/plots".format(run_dir, run_dir))
    print("[train] next: make serve MODEL_DIR={0}/model   make predict IMAGE=<jpg> MODEL_DIR={0}/model".format(run_dir))
    return 0
