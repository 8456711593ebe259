"""``make deploy``: model + endpoint config + endpoint with our serving image.

What it creates is tagged ``shelfdet:deployment=<endpoint>`` and recorded in
``runs/deployments/<endpoint>.json``, so ``make undeploy`` removes exactly that.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from . import aws, training
from .aws import LaunchError, note

RECORD_DIR = os.path.join("runs", "deployments")
TAG = "shelfdet:deployment"
NAME_KEYS = {"create_model": "ModelName", "create_endpoint_config": "EndpointConfigName", "create_endpoint": "EndpointName"}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model.tar.gz S3 URI or training job name (default: the newest completed detectron2-* job)")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment (repeatable)")
    parser.add_argument("--output-prefix", default="detectron2/output", help="S3 prefix training wrote artefacts to")
    aws.add_common(parser)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet deploy", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="endpoint name (default: generated)")
    p.add_argument("--instance-type", default="ml.g4dn.xlarge")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    p.add_argument("--record-dir", default=RECORD_DIR)
    add_model_flags(p)
    return p


def latest_job(cloud: aws.Aws) -> str:
    sm = cloud.client("sagemaker")
    jobs = []  # type: List[Dict[str, Any]]
    for page in sm.get_paginator("list_training_jobs").paginate(NameContains="detectron2-", StatusEquals="Completed"):
        jobs += page.get("TrainingJobSummaries", [])
    if not jobs:
        raise LaunchError("no completed detectron2-* training job in {}: pass MODEL=<s3 uri or job name>".format(cloud.region))
    return max(jobs, key=lambda j: j["CreationTime"])["TrainingJobName"]


def model_data(cloud: aws.Aws, model: Optional[str], bucket: Optional[str], output_prefix: str) -> str:
    """MODEL as the S3 URI of a model.tar.gz: given, or a training job's artefact."""
    if model and model.startswith("s3://"):
        if not cloud.dry_run:
            b, key = aws.split_s3(model)
            try:
                cloud.client("s3").head_object(Bucket=b, Key=key)
            except cloud.client("s3").exceptions.ClientError:
                raise LaunchError("model {} not found in S3".format(model)) from None
        return model
    if cloud.dry_run:
        if model and bucket:
            # Where our training jobs put it (see training.py's OutputDataConfig).
            return aws.s3_uri(bucket, output_prefix, model, "output").rstrip("/") + "/model.tar.gz"
        return "<ModelArtifacts of training job {}>".format(model or "(newest completed detectron2-*)")
    job = model or latest_job(cloud)
    sm = cloud.client("sagemaker")
    try:
        desc = sm.describe_training_job(TrainingJobName=job)
    except sm.exceptions.ClientError:
        raise LaunchError("MODEL={} is neither an s3:// URI nor a training job in {}".format(job, cloud.region)) from None
    if desc["TrainingJobStatus"] != "Completed":
        raise LaunchError("training job {} is {}, not Completed: no model to deploy".format(job, desc["TrainingJobStatus"]))
    note("model from training job {}".format(job))
    return desc["ModelArtifacts"]["S3ModelArtifacts"]


def environment(pairs: List[str]) -> Dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise LaunchError("--env {!r}: expected KEY=VALUE".format(pair))
        key, value = pair.split("=", 1)
        env[key] = value
    if "SHELFDET_INFER" in env:
        from ..hyperparameters import HyperparameterError, parse_inference

        try:  # here, not as the endpoint fails to start minutes later
            parse_inference(env["SHELFDET_INFER"], "SHELFDET_INFER")
        except HyperparameterError as err:
            raise LaunchError(str(err)) from None
    return env


def model_request(name: str, image: str, data: str, role: str, env: Dict[str, str], tags: List[Dict[str, str]]) -> Dict[str, Any]:
    container = {"Image": image, "ModelDataUrl": data}  # type: Dict[str, Any]
    if env:
        container["Environment"] = env
    return {"ModelName": name, "PrimaryContainer": container, "ExecutionRoleArn": role, "Tags": tags}


def build_requests(args: argparse.Namespace, cloud: aws.Aws) -> List[Any]:
    """[(operation, request), ...] in the order they are sent."""
    stamp = aws.timestamp()
    endpoint = args.endpoint or aws.job_name("detectron2", stamp)
    tags = [{"Key": TAG, "Value": endpoint}]
    role = cloud.role_arn(args.role)
    image = cloud.image_uri("serving", args.stack or aws.default_stack(args.instance_type), args.image_uri)
    data = model_data(cloud, args.model, args.bucket, args.output_prefix)
    if not cloud.dry_run and endpoint_exists(cloud, endpoint):
        raise LaunchError("endpoint {} exists: `make undeploy ENDPOINT={}` first, or choose another ENDPOINT".format(endpoint, endpoint))
    # Named after the endpoint (no timestamp) so a dry run prints the names that will be sent.
    model_name = aws.job_name(endpoint[:56], "model")
    config_name = aws.job_name(endpoint[:56], "config")
    return [
        ("create_model", model_request(model_name, image, data, role, environment(args.env), tags)),
        ("create_endpoint_config", {
            "EndpointConfigName": config_name,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model_name,
                                    "InstanceType": args.instance_type, "InitialInstanceCount": args.instance_count}],
            "Tags": tags}),
        ("create_endpoint", {"EndpointName": endpoint, "EndpointConfigName": config_name, "Tags": tags}),
    ]


def endpoint_exists(cloud: aws.Aws, endpoint: str) -> bool:
    sm = cloud.client("sagemaker")
    try:
        sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError:
        return False
    return True


def record_path(record_dir: str, endpoint: str) -> str:
    return os.path.join(record_dir, endpoint + ".json")


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    cloud = aws.Aws.from_args(args)
    requests = build_requests(args, cloud)
    created = {"region": args.region}  # type: Dict[str, Any]
    for operation, request in requests:
        cloud.send("sagemaker", operation, request)
        created[operation[len("create_"):]] = request[NAME_KEYS[operation]]
        if not cloud.dry_run:
            # Recorded after each step, so a failure half way still lets undeploy clean up.
            os.makedirs(args.record_dir, exist_ok=True)
            endpoint = requests[-1][1]["EndpointName"]
            with open(record_path(args.record_dir, endpoint), "w") as f:
                json.dump(dict(created, endpoint=endpoint), f, indent=2)
    if cloud.dry_run:
        return 0
    endpoint = requests[-1][1]["EndpointName"]
    note("creating endpoint {}\n  {}".format(endpoint, training.console_url(args.region, "endpoints", endpoint)))
    if not args.no_wait:
        sm = cloud.client("sagemaker")
        from botocore.exceptions import WaiterError

        try:
            sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": max(1, int(training.poll_seconds())), "MaxAttempts": 120})
        except WaiterError:
            reason = sm.describe_endpoint(EndpointName=endpoint).get("FailureReason", "not in service in time")
            raise LaunchError("endpoint {} failed: {} (`make undeploy ENDPOINT={}` cleans up)".format(endpoint, reason, endpoint)) from None
        note("endpoint {} is in service: make predict ENDPOINT={} IMAGE=<image>".format(endpoint, endpoint))
    print(endpoint, flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return aws.run(_main, sys.argv[1:] if argv is None else argv)
