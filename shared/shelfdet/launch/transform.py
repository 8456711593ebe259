"""``make transform``: batch transform over the test channel, then ``shelfdet evaluate`` on the outputs.

SageMaker writes ``<image>.out`` (the serving answer's JSON) per input image; they are
downloaded to a local folder and scored against the test manifest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

from shelfdet.launch import aws, deploy, training
from shelfdet.launch.aws import LaunchError, note


@dataclasses.dataclass
class TransformOptions(deploy.ModelOptions):
    instance_type: str = "ml.p3.2xlarge"
    job_name: Optional[str] = None  # default: generated, unique
    batch_strategy: str = "SingleRecord"
    max_payload: int = 16  # MB per request
    max_concurrent: Optional[int] = None  # per instance (default: the container's)
    transform_prefix: str = "detectron2/transform"


def build_requests(args: TransformOptions, cloud: aws.Aws) -> List[Any]:
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
