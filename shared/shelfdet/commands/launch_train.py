"""``make train INSTANCE_TYPE=ml.*``: a SageMaker training job with our training image.

shelfdet.commands.train hands argv over unchanged when it holds ``--instance-type``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import training
from shelfdet.launch.aws import note


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet train", description=__doc__.splitlines()[0])
    launching.add_job_flags(p)
    p.add_argument("--wait", action="store_true", help="follow the job and its logs to the end")
    p.add_argument("--keep-alive", type=int, default=0,
                   help="seconds the instances stay in a warm pool for the next matching job (at most 3600)")
    p.add_argument("--tensorboard-prefix", default="detectron2/tensorboard",
                   help="S3 prefix the job's TensorBoard event files are synced to (one folder per job)")
    # Local-training flags, accepted so the Makefile's argv passes through unchanged.
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    return p


def _main(argv: List[str]) -> int:
    own, hp_argv = launching.split_hp(argv)
    args = parser().parse_args(own)
    cloud = launching.cloud(args)
    request = training.build_request(training.TrainOptions.of(args), hp_argv, cloud)
    cloud.send("sagemaker", "create_training_job", request)
    if args.dry_run:
        return 0
    name = request["TrainingJobName"]
    note("started training job {}\n  {}".format(name, training.console_url(args.region, "jobs", name)))
    launching.say(name)
    if args.wait:
        for line in training.report(training.wait(cloud, name, launching.say)):
            print(line)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
