"""``make transform``: batch transform over the test channel, then ``shelfdet evaluate`` on the outputs.

SageMaker writes ``<image>.out`` (the serving answer's JSON) per input image; they are
downloaded to a local folder and scored against the test manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

from shelfdet.launch import aws, deploy, training
from shelfdet.launch.aws import LaunchError, note


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
    deploy.add_model_flags(p)
    return p


def build_requests(args: argparse.Namespace, cloud: aws.Aws) -> List[Any]:
    training.check_vpc(args)
    name = args.job_name or aws.job_name("detectron2-transform", aws.timestamp())
    role = cloud.role_arn(args.role)
    bucket = cloud.check_bucket(args.bucket)
    image = cloud.image_uri("serving", args.stack or aws.default_stack(args.instance_type), args.image_uri)
    data = deploy.model_data(cloud, args.model, bucket, args.output_prefix)
    source = aws.s3_uri(bucket, args.prefix, "test")
    if not cloud.check_prefix(source, "test"):
        raise LaunchError("no images under {}: run `make upload BUCKET={} PREFIX={}` first".format(source, bucket, args.prefix))
    if args.batch_strategy == "MultiRecord":
        note("warning: MultiRecord sends several whole images in one request; the serving app must accept that")
    job = {
        "TransformJobName": name,
        "ModelName": name,
        "BatchStrategy": args.batch_strategy,
        "MaxPayloadInMB": args.max_payload,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": source}},
            "ContentType": "application/x-image",
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": aws.s3_uri(bucket, args.transform_prefix, name),
                            "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {"InstanceType": args.instance_type, "InstanceCount": args.instance_count},
    }  # type: Dict[str, Any]
    if args.max_concurrent:
        job["MaxConcurrentTransforms"] = args.max_concurrent
    if args.kms_key:
        job["TransformOutput"]["KmsKeyId"] = args.kms_key
    volume_key = aws.volume_key(args.kms_key, args.instance_type, "VolumeKmsKeyId")
    if volume_key:
        job["TransformResources"]["VolumeKmsKeyId"] = volume_key
    model = deploy.model_request(name, image, data, role, deploy.environment(args.env),
                                 [{"Key": "shelfdet:transform", "Value": name}], args)
    return [("create_model", model), ("create_transform_job", job)]


def wait(cloud: aws.Aws, name: str) -> Dict[str, Any]:
    """boto3's transform waiter, printing each status change; a job that did not complete is an error."""
    seen = []  # type: List[str]

    def show(desc: Dict[str, Any]) -> None:
        if desc["TransformJobStatus"] not in seen[-1:]:
            note("[{}] {}".format(name, desc["TransformJobStatus"]))
            seen.append(desc["TransformJobStatus"])

    desc = training.follow(cloud, "transform_job_completed_or_stopped", {"TransformJobName": name}, "TransformJobStatus", show)
    status = desc["TransformJobStatus"]
    if status != "Completed":
        raise LaunchError("transform job {} {}: {}".format(name, status.lower(), desc.get("FailureReason") or "no reason given"))
    return desc


def download(cloud: aws.Aws, output_uri: str, folder: str) -> int:
    """Fetches every ``*.out`` under the output prefix, flat, keeping ``<image>.out`` names.

    A key that would lead out of the folder is skipped with a warning; the folder's written.json records
    what was downloaded (make clean removes that), and a file there that the project did not write is
    never replaced.
    """
    from shelfdet.core import safepath
    from shelfdet.data import DataError
    from shelfdet.data.written import Written

    s3 = cloud.client("s3")
    bucket, prefix = aws.split_s3(output_uri)
    written = Written(folder, legacy=False)
    wanted = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".out"):
                    continue
                try:
                    # Below the prefix: a key with '..' or an absolute part names another place.
                    safepath.check(obj["Key"][len(prefix.rstrip("/")) + 1:] if prefix else obj["Key"], subpath=True)
                    path = written.claim(safepath.check(os.path.basename(obj["Key"])))
                except safepath.UnsafeName as err:
                    note("warning: s3://{}/{}: skipped: {}".format(bucket, json.dumps(obj["Key"])[1:-1], err))
                    continue
                wanted.append((obj["Key"], path))
        written.begin()
    except DataError as err:
        raise LaunchError(str(err)) from None
    for key, path in wanted:
        s3.download_file(bucket, key, path)
    written.finish(keep=("",))
    return len(wanted)


def evaluate_command(predictions: str, manifest: str) -> List[str]:
    return [sys.executable, "-m", "shelfdet", "evaluate", "--predictions", predictions, "--manifest", manifest]


def evaluate(predictions: str, manifest: str) -> int:
    command = evaluate_command(predictions, manifest)
    note("+ " + " ".join(command))
    return subprocess.call(command)


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    manifest = args.manifest or os.path.join(args.data_dir, "annotations", "test.manifest")
    scoring = not (args.no_wait or args.no_evaluate or args.dry_run)
    if scoring and not os.path.isfile(manifest):
        # Checked before anything is launched: the job's output would have nothing to be scored against.
        raise LaunchError("test manifest {} not found: pass MANIFEST=<path> (or --no-evaluate)".format(manifest))
    cloud = aws.Aws.from_args(args)
    requests = build_requests(args, cloud)
    for operation, request in requests:
        cloud.send("sagemaker", operation, request)
    if args.dry_run:
        return 0
    job = requests[-1][1]
    name = job["TransformJobName"]
    note("started transform job {}\n  {}".format(name, training.console_url(args.region, "transform-jobs", name)))
    print(name, flush=True)
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
    return aws.run(_main, sys.argv[1:] if argv is None else argv)
