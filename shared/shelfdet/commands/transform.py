"""``make transform``: batch transform over the test channel, then ``shelfdet evaluate`` on the outputs."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import training
from shelfdet.launch.aws import LaunchError, note
from shelfdet.launch.transform import TransformOptions, build_requests, download, evaluate, wait


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet transform", description=__doc__.splitlines()[0])
    p.add_argument("--instance-type", default="ml.p3.2xlarge")
    p.add_argument("--job-name", help="explicit job name (default: generated, unique)")
    p.add_argument("--batch-strategy", default="SingleRecord", choices=("SingleRecord", "MultiRecord"))
    p.add_argument("--max-payload", type=int, default=16, help="MB per request")
    p.add_argument("--max-concurrent", type=int, help="concurrent requests per instance (default: the container's)")
    p.add_argument("--transform-prefix", default="detectron2/transform", help="S3 prefix of the outputs")
    p.add_argument("--download-dir", help="local folder for the outputs (default runs/transform/<job>)")
    p.add_argument("--data-dir", default="data", help="local dataset (for its test manifest)")
    p.add_argument("--manifest", help="test manifest to score against (default DATA_DIR/annotations/test.manifest)")
    p.add_argument("--no-wait", action="store_true", help="return once the job is created (no download, no evaluation)")
    p.add_argument("--no-evaluate", action="store_true", help="download the outputs but do not score them")
    launching.add_model_flags(p)
    return p


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    manifest = args.manifest or os.path.join(args.data_dir, "annotations", "test.manifest")
    scoring = not (args.no_wait or args.no_evaluate or args.dry_run)
    if scoring and not os.path.isfile(manifest):
        # Checked before anything is launched: the job's output would have nothing to be scored against.
        raise LaunchError("test manifest {} not found: pass MANIFEST=<path> (or --no-evaluate)".format(manifest))
    cloud = launching.cloud(args)
    requests = build_requests(TransformOptions.of(args), cloud)
    for operation, request in requests:
        cloud.send("sagemaker", operation, request)
    if args.dry_run:
        return 0
    job = requests[-1][1]
    name = job["TransformJobName"]
    note("started transform job {}\n  {}".format(name, training.console_url(args.region, "transform-jobs", name)))
    launching.say(name)
    if args.no_wait:
        note("model {} stays (the job uses it); delete it afterwards with aws sagemaker delete-model".format(name))
        return 0
    wait(cloud, name)
    # The model existed only for this job.
    cloud.client("sagemaker").delete_model(ModelName=name)
    folder = args.download_dir or os.path.join("runs", "transform", name)
    count = download(cloud, job["TransformOutput"]["S3OutputPath"], folder)
    note("downloaded {} predictions to {}".format(count, folder))
    if count == 0:
        raise LaunchError("transform job {} wrote no .out files under {}".format(name, job["TransformOutput"]["S3OutputPath"]))
    if args.no_evaluate:
        return 0
    return evaluate(folder, manifest)


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
