"""``make tune``: a SageMaker hyperparameter tuning job over the table's ``tune`` ranges."""
from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Dict, List, Sequence

from shelfdet.core import hyperparameters
from shelfdet.launch import aws, training
from shelfdet.launch.aws import LaunchError, note

OBJECTIVES = {"validation:ap": "Maximize", "validation:loss": "Minimize"}
# Ranges that only mean something for one detector (the table's help says which).
# Parameters whose help starts with a detector's name apply to those detectors only
# (Cascade R-CNN is a Faster R-CNN with more box stages: its RPN and RoI sampling are the same).
ONLY_FOR = {"RetinaNet:": ("retinanet",), "Faster R-CNN:": ("faster_rcnn", "cascade_rcnn")}
SHORT = {"faster_rcnn": "frcnn", "retinanet": "retina", "cascade_rcnn": "cascade"}
RANGE_KEYS = {"continuous": "ContinuousParameterRanges", "integer": "IntegerParameterRanges"}


@dataclasses.dataclass
class TuneOptions(training.JobOptions):
    objective: str = "validation:ap"  # one of OBJECTIVES
    max_jobs: int = 8
    max_parallel: int = 2
    early_stopping: str = "Auto"
    strategy: str = "Bayesian"

def tuning_name(algo: str) -> str:
    # Tuning job names are limited to 32 characters: d2-frcnn-251127-223000-123 is 26.
    now = datetime.datetime.now(datetime.timezone.utc)
    return "d2-{}-{}{:03d}".format(SHORT[algo], now.strftime("%y%m%d-%H%M%S-"), now.microsecond // 1000)


def parameter_ranges(algo: str, pinned: Sequence[str]) -> Dict[str, List[Dict[str, str]]]:
    """The table's tune ranges for this detector, minus those HP pins to a value."""
    ranges = {key: [] for key in ("ContinuousParameterRanges", "IntegerParameterRanges", "CategoricalParameterRanges")}
    for p in hyperparameters.PARAMS:
        if p.tune is None or p.name in pinned:
            continue
        owners = next((a for prefix, a in ONLY_FOR.items() if p.help.startswith(prefix)), (algo,))
        if algo not in owners:
            continue
        kind, low, high, scaling = p.tune
        ranges[RANGE_KEYS[kind]].append({"Name": p.name, "MinValue": str(low), "MaxValue": str(high), "ScalingType": scaling})
    return ranges


def build_request(args: TuneOptions, hp_argv: Sequence[str], cloud: aws.Aws) -> Dict[str, Any]:
    if not 1 <= args.max_parallel <= args.max_jobs:
        raise LaunchError("MAX_PARALLEL ({}) must be between 1 and MAX_JOBS ({})".format(args.max_parallel, args.max_jobs))
    name = args.job_name or tuning_name(args.algo)
    if len(name) > 32:
        raise LaunchError("tuning job name '{}' is longer than 32 characters".format(name))
    pinned = [k.replace("_", "-") for k in hyperparameters.parse_cli(hp_argv)]
    extra = {}
    if args.objective == "validation:ap":
        if "val-ap" in pinned and not hyperparameters.BY_NAME["val-ap"].parse(hyperparameters.parse_cli(hp_argv).get("val-ap", "true")):
            raise LaunchError("OBJECTIVE=validation:ap needs val-ap true (the job prints validation_ap only then)")
        extra["val-ap"] = "true"
    pieces, implied = training.job_pieces(args, cloud, name, hp_argv)
    extra.update(implied)
    ranges = parameter_ranges(args.algo, pinned)
    static = training.hyperparameters(args.algo, hp_argv, extra)
    tuned = [r["Name"] for group in ranges.values() for r in group]
    definition = {"StaticHyperParameters": {k: v for k, v in static.items() if k not in tuned}}
    definition.update(pieces)
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": args.strategy,
            "HyperParameterTuningJobObjective": {"Type": OBJECTIVES[args.objective], "MetricName": args.objective},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": args.max_jobs, "MaxParallelTrainingJobs": args.max_parallel},
            "ParameterRanges": ranges,
            "TrainingJobEarlyStoppingType": args.early_stopping,
        },
        "TrainingJobDefinition": definition,
    }


def wait(cloud: aws.Aws, name: str) -> List[str]:
    """Follows the tuning job to its end: the lines that name its best training job."""
    # A loop, not a waiter: botocore's SageMaker waiters (waiters-2.json) have none for
    # DescribeHyperParameterTuningJob; training and transform use theirs (training.follow).
    sm = cloud.client("sagemaker")
    seen = None
    while True:
        desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        status = desc["HyperParameterTuningJobStatus"]
        counts = desc.get("TrainingJobStatusCounters", {})
        if (status, str(counts)) != seen:
            note("[{}] {} {}".format(name, status, counts))
            seen = (status, str(counts))
        if status in training.TERMINAL:
            break
        time.sleep(training.poll_seconds())
    if status != "Completed":
        raise LaunchError("tuning job {} {}: {}".format(name, status.lower(), desc.get("FailureReason") or "no reason given"))
    best = desc.get("BestTrainingJob") or {}
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    lines = ["best training job: {}".format(best.get("TrainingJobName", "none"))]
    if metric:
        lines.append("objective {}: {}".format(metric.get("MetricName"), metric.get("Value")))
    return lines + ["  {} = {}".format(key, value) for key, value in sorted((best.get("TunedHyperParameters") or {}).items())]
