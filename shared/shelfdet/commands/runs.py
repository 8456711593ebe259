"""``make runs [REMOTE=1]`` and ``make compare RUNS="a b"``: training runs side by side.

``runs``: one line per local run folder (``runs/<run>``, the SageMaker layout), read from its files:
hyperparameters, ``checkpoints/metrics.json`` (what was logged), ``model/metrics.json`` (the final
evaluation) and ``output/failure``. ``--remote`` adds SageMaker training jobs (ListTrainingJobs and
DescribeTrainingJob: final metrics, billable seconds, spot savings).

``compare``: the runs' training and validation curves on one PNG, and ``<run>/results.csv`` for each
run, one row per logged iteration.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from shelfdet.core.metrics import RUN_COMPLETE as COMPLETE_FILE
from shelfdet.core.metrics import RUN_FINAL_METRICS as FINAL_FILE
from shelfdet.core.metrics import RUN_HYPERPARAMETERS as HP_FILE
from shelfdet.core.metrics import read_json as _json

LOG_FILE = os.path.join("checkpoints", "metrics.json")
EVENTS = os.path.join("output", "tensorboard", "validation")
# A run whose log moved this recently is taken to be training now.
RUNNING_WITHIN_S = 300
COLUMNS = ["run", "algorithm", "recipe", "iterations", "AP", "AP50", "count MAE", "wall time", "status", "resume"]
BILL_COLUMNS = ["billable s", "instance-h", "spot saved"]


def logged(run: str) -> List[Dict[str, Any]]:
    """The JSONWriter's records, one per logged iteration: a resumed run logs some iterations twice
    (those after its last checkpoint), the later record wins."""
    rows: Dict[int, Dict[str, Any]] = {}
    try:
        with open(os.path.join(run, LOG_FILE)) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if "iteration" in record:
                    rows[int(record["iteration"])] = record
    except OSError:
        return []
    return [rows[i] for i in sorted(rows)]


def _first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _duration(seconds: Optional[float], estimate: bool = False) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    text = "{}h{:02d}m".format(seconds // 3600, seconds % 3600 // 60) if seconds >= 3600 else \
        "{}m{:02d}s".format(seconds // 60, seconds % 60)
    return "~" + text if estimate else text


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else "{:.{}f}".format(float(value), digits)


def local_row(run: str, now: Optional[float] = None) -> Dict[str, str]:
    hps = _json(os.path.join(run, HP_FILE))
    final = _json(os.path.join(run, FINAL_FILE))
    records = logged(run)
    total = hps.get("num-iter", "?")
    done = final.get("iterations") if final else (records[-1]["iteration"] + 1 if records else 0)
    if final:
        wall = _duration(final.get("train_seconds", 0) + final.get("eval_seconds", 0))
    else:  # the smoothed seconds per iteration over each logged stretch
        seconds, last = 0.0, -1
        for r in records:
            seconds += r.get("time", 0.0) * (r["iteration"] - last)
            last = r["iteration"]
        wall = _duration(seconds, estimate=True) if records else "-"
    checkpoint = _first_line(os.path.join(run, "checkpoints", "last_checkpoint"))
    failure = _first_line(os.path.join(run, "output", "failure"))
    log_path = os.path.join(run, LOG_FILE)
    if os.path.isfile(os.path.join(run, COMPLETE_FILE)):
        status, resume = "complete", "complete"
    else:
        moved = os.path.isfile(log_path) and (now or time.time()) - os.path.getmtime(log_path) < RUNNING_WITHIN_S
        status = "running" if moved else ("failed: " + failure[:60] if failure else "stopped")
        resume = "RUN_DIR={} (from {})".format(run, checkpoint) if checkpoint else "-"
    return {"run": os.path.basename(os.path.normpath(run)), "algorithm": hps.get("model-type", "?"),
            "recipe": hps.get("recipe", "none"), "iterations": "{}/{}".format(done, total),
            "AP": _number(final.get("AP")), "AP50": _number(final.get("AP50")),
            "count MAE": _number(final.get("count_mae"), 2), "wall time": wall, "status": status, "resume": resume}


def local_runs(runs_dir: str) -> List[str]:
    """Run folders under runs_dir (those with the hyperparameters a run starts from), oldest first."""
    found = [os.path.dirname(os.path.dirname(os.path.dirname(p)))
             for p in glob.glob(os.path.join(runs_dir, "*", HP_FILE))]
    return sorted(found, key=lambda p: os.path.getmtime(os.path.join(p, HP_FILE)))


def _metric(desc: Dict[str, Any], *names: str) -> Optional[float]:
    values = {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])}
    for name in names:
        if name in values:
            return values[name]
    return None


def remote_row(desc: Dict[str, Any]) -> Dict[str, str]:
    """A SageMaker training job in the same columns, plus the bill's."""
    hps = desc.get("HyperParameters", {})
    status = desc["TrainingJobStatus"]
    billable = desc.get("BillableTimeInSeconds")
    trained = desc.get("TrainingTimeInSeconds")
    resources = desc.get("ResourceConfig", {})
    count = int(resources.get("InstanceCount", 1))
    spot = "-"
    if desc.get("EnableManagedSpotTraining"):
        spot = "{:.0f}%".format(100.0 * (1.0 - float(billable) / trained)) if billable is not None and trained else "?"
    checkpoints = desc.get("CheckpointConfig", {}).get("S3Uri")
    if status == "Completed":
        resume = "complete"
    elif status == "InProgress":
        resume = "-"
    else:
        resume = "checkpoints in {}".format(checkpoints) if checkpoints else "-"
    ap = _metric(desc, "test:ap", "validation:ap")
    return {"run": desc["TrainingJobName"], "algorithm": hps.get("model-type", "?"), "recipe": hps.get("recipe", "none"),
            "iterations": hps.get("num-iter", "?"), "AP": _number(ap), "AP50": _number(_metric(desc, "test:ap50", "validation:ap50")),
            "count MAE": _number(_metric(desc, "test:count_mae", "validation:count_mae"), 2),
            "wall time": _duration(trained), "status": status.lower() + (
                ": " + desc["FailureReason"][:60] if desc.get("FailureReason") else ""),
            "resume": resume, "billable s": "-" if billable is None else str(billable),
            "instance-h": "-" if billable is None else "{:.3f}".format(billable * count / 3600.0), "spot saved": spot}


def remote_rows(region: str, name_contains: str, limit: int) -> List[Dict[str, str]]:
    from shelfdet.launch import aws

    sm = aws.Aws(region).client("sagemaker")
    names: List[str] = []
    pages = sm.get_paginator("list_training_jobs").paginate(NameContains=name_contains, SortBy="CreationTime",
                                                            SortOrder="Descending")
    for page in pages:
        names += [j["TrainingJobName"] for j in page["TrainingJobSummaries"]]
        if len(names) >= limit:
            break
    return [remote_row(sm.describe_training_job(TrainingJobName=n)) for n in names[:limit]]


def table(rows: List[Dict[str, str]], columns: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate([[r.get(c, "") for c in columns] for r in rows], headers=list(columns), tablefmt="simple",
                    disable_numparse=True)


def main_runs(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shelfdet runs", description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--remote", action="store_true", help="SageMaker training jobs too")
    p.add_argument("--region", default=None)
    p.add_argument("--name-contains", default="detectron2", help="remote: jobs whose name contains this")
    p.add_argument("--limit", type=int, default=20, help="remote: the newest N jobs")
    args = p.parse_args(argv)
    rows = [local_row(r) for r in local_runs(args.runs_dir)]
    print("local runs in {}/".format(args.runs_dir) if rows else "no local runs in {}/ (make train starts one)".format(args.runs_dir))
    if rows:
        print(table(rows, COLUMNS))
    if args.remote:
        from shelfdet.commands import launching

        def remote(_: Any) -> int:
            jobs = remote_rows(args.region, args.name_contains, args.limit)
            print("")
            print("SageMaker training jobs ({} newest named *{}*)".format(len(jobs), args.name_contains)
                  if jobs else "no SageMaker training jobs named *{}*".format(args.name_contains))
            if jobs:
                print(table(jobs, COLUMNS + BILL_COLUMNS))
            return 0

        return launching.run(remote, [])
    return 0


# ---- compare ---------------------------------------------------------------------------

def validation_events(run: str) -> Dict[int, Dict[str, float]]:
    """iteration -> the validation hooks' scalars, from the run's TensorBoard event files."""
    folder = os.path.join(run, EVENTS)
    if not os.path.isdir(folder):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(folder, size_guidance={SCALARS: 0})
    acc.Reload()
    out: Dict[int, Dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):  # a resumed run may repeat a step: the later one wins
            out.setdefault(event.step, {})["validation_" + tag] = event.value
    return out


def results(run: str) -> List[Dict[str, Any]]:
    """One row per logged iteration: the training scalars and, where validation ran, its scalars."""
    rows = {r["iteration"]: dict(r) for r in logged(run)}
    for step, values in validation_events(run).items():
        rows.setdefault(step, {"iteration": step}).update(values)
    for row in rows.values():
        row.pop("eta_seconds", None)
    return [rows[i] for i in sorted(rows)]


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
    columns = ["iteration"] + sorted({k for r in rows for k in r} - {"iteration"},
                                     key=lambda k: (k.startswith("validation_"), k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot(curves: Dict[str, List[Dict[str, Any]]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, ap_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (name, rows) in enumerate(curves.items()):
        color = "C{}".format(i % 10)
        train = [(r["iteration"] + 1, r["total_loss"]) for r in rows if "total_loss" in r]
        val = [(r["iteration"] + 1, r["validation_total_loss"]) for r in rows if "validation_total_loss" in r]
        ap = [(r["iteration"] + 1, r["validation_AP"]) for r in rows if "validation_AP" in r]
        if train:
            loss_ax.plot(*zip(*train), color=color, lw=1.2, label=name + " (training)")
        if val:
            loss_ax.plot(*zip(*val), color=color, lw=1.6, ls="--", marker="o", ms=3, label=name + " (validation)")
        if ap:
            ap_ax.plot(*zip(*ap), color=color, marker="o", ms=3, label=name)
    loss_ax.set(title="total loss (solid: training, smoothed; dashed: validation)", xlabel="iteration", ylabel="loss")
    loss_ax.set_yscale("log")
    ap_ax.set(title="validation AP (COCO, IoU .50:.95)", xlabel="iteration", ylabel="AP")
    for ax in (loss_ax, ap_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not ap_ax.lines:
        ap_ax.text(0.5, 0.5, "no validation AP logged\n(train with HP='--val-ap true')", ha="center", va="center",
                   transform=ap_ax.transAxes, color="0.4")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main_compare(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shelfdet compare", description="training and validation curves of runs on one PNG")
    p.add_argument("runs", nargs="+", help="run names under --runs-dir, or run folders")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=None, help="the PNG (default: <runs-dir>/compare.png)")
    args = p.parse_args(argv)
    curves: Dict[str, List[Dict[str, Any]]] = {}
    for name in args.runs:
        run = name if os.path.isdir(os.path.join(name, "checkpoints")) else os.path.join(args.runs_dir, name)
        rows = results(run)
        if not rows:
            known = ", ".join(os.path.basename(r) for r in local_runs(args.runs_dir)) or "none"
            print("error: {}: nothing logged ({} missing or empty); runs: {}".format(
                name, os.path.join(run, LOG_FILE), known), file=sys.stderr)
            return 2
        write_csv(rows, os.path.join(run, "results.csv"))
        print("{}: {} logged iterations -> {}".format(name, len(rows), os.path.join(run, "results.csv")))
        curves[os.path.basename(os.path.normpath(run))] = rows
    out = args.out or os.path.join(args.runs_dir, "compare.png")
    plot(curves, out)
    print("curves of {} run(s) -> {}".format(len(curves), out))
    return 0
