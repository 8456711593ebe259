"""``make tune``: a SageMaker hyperparameter tuning job over the table's ``tune`` ranges."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import training
from shelfdet.launch.aws import note
from shelfdet.launch.tuning import OBJECTIVES, TuneOptions, build_request, wait


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet tune", description=__doc__.splitlines()[0])
    launching.add_job_flags(p)
    p.add_argument("--objective", default="validation:ap", choices=sorted(OBJECTIVES))
    p.add_argument("--max-jobs", type=int, default=8)
    p.add_argument("--max-parallel", type=int, default=2)
    p.add_argument("--early-stopping", default="Auto", choices=("Auto", "Off"))
    p.add_argument("--strategy", default="Bayesian", choices=("Bayesian", "Random"))
    p.add_argument("--wait", action="store_true", help="follow the tuning job to the end and print the best job")
    return p


def _main(argv: List[str]) -> int:
    own, hp_argv = launching.split_hp(argv)
    args = parser().parse_args(own)
    cloud = launching.cloud(args)
    request = build_request(TuneOptions.of(args), hp_argv, cloud)
    cloud.send("sagemaker", "create_hyper_parameter_tuning_job", request)
    if args.dry_run:
        return 0
    name = request["HyperParameterTuningJobName"]
    note("started tuning job {}\n  {}".format(name, training.console_url(args.region, "hyper-tuning-jobs", name)))
    launching.say(name)
    if args.wait:
        for line in wait(cloud, name):
            print(line)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
