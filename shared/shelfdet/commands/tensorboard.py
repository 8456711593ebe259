"""``make tensorboard [RUNS=...] [JOB=...]``: TensorBoard over local runs, or over a SageMaker job's event files.

Local runs write ``runs/<run>/output/tensorboard`` (the run folder mirrors
/opt/ml). ``JOB=<training job>`` first copies what the job's
TensorBoardOutputConfig synced to ``s3://BUCKET/detectron2/tensorboard/<job>/``
into ``runs/sagemaker/<job>/output/tensorboard`` (again only what changed), then serves it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional

EVENTS = os.path.join("output", "tensorboard")


def local_runs(names: List[str], runs_dir: str) -> Dict[str, str]:
    """run name -> its event folder; every run that has one when no names are given."""
    if not names:
        found = sorted(glob.glob(os.path.join(runs_dir, "*", EVENTS)) + glob.glob(os.path.join(runs_dir, "sagemaker", "*", EVENTS)))
        return {os.path.relpath(os.path.dirname(os.path.dirname(p)), runs_dir): p for p in found}
    out = {}
    for name in names:
        run = name if os.path.isdir(name) else os.path.join(runs_dir, name)
        events = os.path.join(run, EVENTS)
        if not os.path.isdir(events):
            raise SystemExit("error: {} has no TensorBoard event files ({} missing); runs: {}".format(
                name, events, ", ".join(sorted(local_runs([], runs_dir))) or "none"))
        out[os.path.basename(os.path.normpath(run))] = events
    return out


def fetch_job(job: str, bucket: str, prefix: str, region: str, runs_dir: str) -> str:
    """Copies the job's synced event files from S3 (files already here at the same size are kept)."""
    from shelfdet.launch import aws

    from shelfdet.core import safepath
    from shelfdet.data import DataError
    from shelfdet.data.written import Written

    try:
        folder = safepath.inside(os.path.join(runs_dir, "sagemaker"), job)
    except safepath.UnsafeName as err:
        raise aws.LaunchError("JOB={}: not a training job name: {}".format(job, err)) from None
    cloud = aws.Aws(region)
    s3 = cloud.client("s3")
    key_prefix = "{}/{}/".format(prefix.strip("/"), job)
    target = os.path.join(folder, EVENTS)
    # The job folder keeps a record of what was downloaded into it, so that make clean removes just that.
    written = Written(folder, legacy=False)
    wanted = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                try:
                    rel = safepath.check(item["Key"][len(key_prefix):], subpath=True)
                except safepath.UnsafeName as err:
                    # The key escaped: a control character in it must not forge or cut the line.
                    print("warning: s3://{}/{}: skipped: {}".format(bucket, json.dumps(item["Key"])[1:-1], err),
                          file=sys.stderr)
                    continue
                wanted.append((item, written.claim("{}/{}".format(EVENTS, rel))))
        written.begin()
    except DataError as err:
        raise aws.LaunchError(str(err)) from None
    copied = 0
    for item, path in wanted:
        if os.path.isfile(path) and os.path.getsize(path) == item["Size"]:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, item["Key"], path)
        copied += 1
    written.finish(keep=("",))  # event files synced earlier stay
    if not os.path.isdir(target):
        raise aws.LaunchError("no event files under s3://{}/{} (has the job written any yet?)".format(bucket, key_prefix))
    print("{} file(s) copied from s3://{}/{} to {}".format(copied, bucket, key_prefix, target), file=sys.stderr)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shelfdet tensorboard", description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", default=[], help="run names under runs/ or run folders (default: every run)")
    p.add_argument("--job", help="a SageMaker training job: its event files from S3")
    p.add_argument("--bucket", help="the bucket the job wrote to (BUCKET)")
    p.add_argument("--tensorboard-prefix", default="detectron2/tensorboard")
    p.add_argument("--region", default=None)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6006)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.job:
        from shelfdet.commands import launching

        if not args.bucket:
            print("error: JOB= needs BUCKET= (the bucket the job wrote to)", file=sys.stderr)
            return 2
        def fetch(_: List[str]) -> int:
            fetch_job(args.job, args.bucket, args.tensorboard_prefix, args.region, args.runs_dir)
            return 0

        rc = launching.run(fetch, [])
        if rc:
            return rc
        runs = {args.job: os.path.join(args.runs_dir, "sagemaker", args.job, EVENTS)}  # the name checked by fetch_job
    else:
        runs = local_runs(args.runs, args.runs_dir)
    if not runs:
        print("error: no run under {}/ has TensorBoard event files yet: `make train` writes them".format(args.runs_dir),
              file=sys.stderr)
        return 2
    spec = ",".join("{}:{}".format(name, path) for name, path in runs.items())
    print("TensorBoard on http://{}:{}/ over {}".format(args.host, args.port, ", ".join(runs)), file=sys.stderr, flush=True)
    # Replaced by TensorBoard itself, so Ctrl-C and a stop signal reach it directly.
    os.execv(sys.executable, [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec,
                              "--host", args.host, "--port", str(args.port)])
    return 0
