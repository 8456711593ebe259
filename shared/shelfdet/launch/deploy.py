"""``make deploy``: model + endpoint config + endpoint with our serving image.

What it creates is tagged ``shelfdet:deployment=<endpoint>`` and recorded in
``runs/deployments/<endpoint>.json``, so ``make undeploy`` removes exactly that.
``--async`` makes an asynchronous endpoint (requests and results on S3) that
scales to zero; ``--min-instances``/``--max-instances`` scale a real-time one.
``--serverless`` makes a serverless endpoint (``ServerlessConfig``: memory and concurrency, no
instances) on the slim serving image, for a model that holds an export.
Scaling is Application Auto Scaling (and, for async, one CloudWatch alarm),
registered once the endpoint is in service, and recorded like the rest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from typing import Any, Callable, Dict, List, Optional, Tuple

from shelfdet.core import exported
from shelfdet.serving import limits
from shelfdet.launch import aws, training
from shelfdet.launch.aws import LaunchError, note

RECORD_DIR = os.path.join("runs", "deployments")
TAG = "shelfdet:deployment"
NAME_KEYS = {"create_model": "ModelName", "create_endpoint_config": "EndpointConfigName", "create_endpoint": "EndpointName"}
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
ASYNC_PREFIX = "detectron2/async"
# The server's default inference threads (serving.app.DEFAULT_THREADS): more at once would wait in its queue.
ASYNC_CONCURRENCY = 4
# AWS's async-inference example: 5 queued requests per instance.
BACKLOG_TARGET = 5.0
# Invocations per instance per minute: about half of what one instance serves at ~1 s a photo
# (measured on CPU at 750/1000: 0.96 s alone), as a new instance takes minutes to start.
INVOCATIONS_TARGET = 30.0
# A new instance takes minutes to start: scaling in waits longer, so a short lull does not cost a cold start.
SCALE_IN_COOLDOWN = 600
SCALE_OUT_COOLDOWN = 300
DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"
# Serverless Inference: CPU only, 1-6 GB of memory in 1 GB steps, 1-200 concurrent invocations per endpoint.
SERVERLESS_STACK = "cpu-slim"  # no torch, no Detectron2: it serves only exported models
SERVERLESS_MEMORY = 6144  # the most: SageMaker gives a serverless endpoint CPU in proportion to its memory
SERVERLESS_MEMORY_RANGE = (1024, 6144, 1024)
# The SageMaker Python SDK's default. Each concurrent invocation is a container of its own, started cold
# when none is idle, and billed while it runs: a handful serves a shop's users while capping what a
# runaway client can spend (the account's serverless concurrency quota is shared by all its endpoints).
SERVERLESS_CONCURRENCY = 5
SERVERLESS_MAX_CONCURRENCY = 200
# What the slim image runs: TorchScript needs torch, which it lacks (exported.FORMATS names all formats).
SERVERLESS_FORMATS = ("openvino", "onnx")


@dataclasses.dataclass
class ModelOptions(training.NetworkOptions):
    """The model an endpoint or a transform serves, and where it runs."""
    model: Optional[str] = None  # model.tar.gz S3 URI or training job name (default: the newest completed one)
    instance_type: str = ""
    instance_count: int = 1
    env: List[str] = dataclasses.field(default_factory=list)  # KEY=VALUE
    output_prefix: str = "detectron2/output"  # where training wrote its artefacts


@dataclasses.dataclass
class DeployOptions(ModelOptions):
    endpoint: Optional[str] = None  # default: generated
    instance_type: Optional[str] = None  # default: DEFAULT_INSTANCE_TYPE; none with serverless
    no_wait: bool = False
    record_dir: str = RECORD_DIR
    async_inference: bool = False
    async_prefix: str = ASYNC_PREFIX
    max_concurrent: int = ASYNC_CONCURRENCY
    sns_success: Optional[str] = None
    sns_error: Optional[str] = None
    min_instances: Optional[int] = None
    max_instances: Optional[int] = None
    target_backlog: float = BACKLOG_TARGET
    target_invocations: float = INVOCATIONS_TARGET
    serverless: bool = False
    memory: int = SERVERLESS_MEMORY
    max_concurrency: int = SERVERLESS_CONCURRENCY


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
    return model_source(cloud, model, bucket, output_prefix)[0]


def model_source(cloud: aws.Aws, model: Optional[str], bucket: Optional[str],
                 output_prefix: str) -> Tuple[str, Optional[Dict[str, Any]]]:
    """MODEL's model.tar.gz S3 URI, and the description of the training job that made it (None for an
    s3:// MODEL, and in a dry run)."""
    if model and model.startswith("s3://"):
        if not cloud.dry_run:
            b, key = aws.split_s3(model)
            try:
                cloud.client("s3").head_object(Bucket=b, Key=key)
            except cloud.client("s3").exceptions.ClientError:
                raise LaunchError("model {} not found in S3".format(model)) from None
        return model, None
    if cloud.dry_run:
        if model and bucket:
            # Where our training jobs put it (see training.py's OutputDataConfig).
            return aws.s3_uri(bucket, output_prefix, model, "output").rstrip("/") + "/model.tar.gz", None
        return "<ModelArtifacts of training job {}>".format(model or "(newest completed detectron2-*)"), None
    job = model or latest_job(cloud)
    sm = cloud.client("sagemaker")
    try:
        desc = sm.describe_training_job(TrainingJobName=job)
    except sm.exceptions.ClientError:
        raise LaunchError("MODEL={} is neither an s3:// URI nor a training job in {}".format(job, cloud.region)) from None
    if desc["TrainingJobStatus"] != "Completed":
        raise LaunchError("training job {} is {}, not Completed: no model to deploy".format(job, desc["TrainingJobStatus"]))
    note("model from training job {}".format(job))
    return desc["ModelArtifacts"]["S3ModelArtifacts"], desc


def export_of_job(desc: Dict[str, Any]) -> str:
    """The export a training job made at its end: its ``export`` hyperparameter (none when it has none)."""
    value = (desc.get("HyperParameters") or {}).get("export", "none")
    # The SageMaker Python SDK sends hyperparameters JSON-encoded ("\"openvino\"").
    return value.strip().strip('"').strip().lower() or "none"


def exports_in_tar(cloud: aws.Aws, uri: str) -> List[str]:
    """The formats under export/<format>/record.json in the model.tar.gz at ``uri``, read as a stream
    and stopped at the first one serverless can serve (a model's weights need not all come down)."""
    bucket, key = aws.split_s3(uri)
    body = cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    found = []  # type: List[str]
    try:
        with tarfile.open(fileobj=body, mode="r|gz") as tar:
            for member in tar:
                parts = member.name.lstrip("./").split("/") if member.isfile() else []
                if len(parts) == 3 and parts[0] == exported.EXPORT_DIR and parts[2] == exported.RECORD and parts[1] in exported.FORMATS:
                    found.append(parts[1])
                    if parts[1] in SERVERLESS_FORMATS:
                        break
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise LaunchError("model {} is not a readable model.tar.gz ({}): pass the model.tar.gz a training job "
                          "wrote".format(uri, err)) from None
    finally:
        body.close()
    return found


def require_export(cloud: aws.Aws, model: Optional[str], data: str, job: Optional[Dict[str, Any]]) -> None:
    """Refuses a model the slim serving image cannot run: one without an OpenVINO or ONNX export."""
    fix = ("train with HP='--export openvino', or run `make export MODEL_DIR=<its model folder>` and deploy that "
           "folder packed as MODEL=s3://.../model.tar.gz")
    if cloud.dry_run:
        note("# dry run: whether {} holds an export the slim image runs (export/<{}>/record.json, or a training "
             "job's export hyperparameter) was not checked".format(model or data, "|".join(SERVERLESS_FORMATS)))
        return
    if job is not None:
        made = export_of_job(job)
        if made not in SERVERLESS_FORMATS:
            raise LaunchError("SERVERLESS=1 serves an exported model, and training job {} made {} (export={}): "
                              "{}".format(job["TrainingJobName"], "no export" if made == "none" else "a " + made + " export, "
                                          "which needs torch", made, fix))
        note("training job {} exported its model to {}".format(job["TrainingJobName"], made))
        return
    found = exports_in_tar(cloud, data)
    if not found or found[-1] not in SERVERLESS_FORMATS:
        raise LaunchError("SERVERLESS=1 serves an exported model, and {} has {} (no export/<{}>/record.json): {}".format(
            data, "only a " + " and ".join(found) + " export, which needs torch" if found else "no export",
            "|".join(SERVERLESS_FORMATS), fix))
    note("{} holds an export ({})".format(data, found[-1]))


def environment(pairs: List[str]) -> Dict[str, str]:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise LaunchError("--env {!r}: expected KEY=VALUE".format(pair))
        key, value = pair.split("=", 1)
        env[key] = value
    if "SHELFDET_INFER" in env:
        from shelfdet.core.hyperparameters import HyperparameterError, parse_inference

        try:  # here, not as the endpoint fails to start minutes later
            parse_inference(env["SHELFDET_INFER"], "SHELFDET_INFER")
        except HyperparameterError as err:
            raise LaunchError(str(err)) from None
    return env


def model_request(name: str, image: str, data: str, role: str, env: Dict[str, str], tags: List[Dict[str, str]],
                  args: Optional[training.NetworkOptions] = None) -> Dict[str, Any]:
    """CreateModel; ``args`` brings VPC_SUBNETS/VPC_SECURITY_GROUPS (VpcConfig) and NETWORK_ISOLATION."""
    container = {"Image": image, "ModelDataUrl": data}  # type: Dict[str, Any]
    if env:
        container["Environment"] = env
    request = {"ModelName": name, "PrimaryContainer": container, "ExecutionRoleArn": role, "Tags": tags}  # type: Dict[str, Any]
    vpc = training.vpc_config(args) if args is not None else None
    if vpc:
        request["VpcConfig"] = vpc
    if args is not None and args.network_isolation:
        request["EnableNetworkIsolation"] = True
    return request


def build_requests(args: DeployOptions, cloud: aws.Aws) -> List[Any]:
    """[(operation, request), ...] in the order they are sent."""
    training.check_vpc(args)
    check_serverless(args)
    stamp = aws.timestamp()
    endpoint = args.endpoint or aws.job_name("detectron2", stamp)
    tags = [{"Key": TAG, "Value": endpoint}]
    role = cloud.role_arn(args.role)
    instance_type = "" if args.serverless else args.instance_type or DEFAULT_INSTANCE_TYPE
    stack = args.stack or (SERVERLESS_STACK if args.serverless else aws.default_stack(instance_type))
    image = cloud.image_uri("serving", stack, args.image_uri)
    data, job = model_source(cloud, args.model, args.bucket, args.output_prefix)
    if args.serverless:
        require_export(cloud, args.model, data, job)
    if not cloud.dry_run and endpoint_exists(cloud, endpoint):
        raise LaunchError("endpoint {} exists: `make undeploy ENDPOINT={}` first, or choose another ENDPOINT".format(endpoint, endpoint))
    # Named after the endpoint (no timestamp) so a dry run prints the names that will be sent.
    model_name = aws.job_name(endpoint[:56], "model")
    config_name = aws.job_name(endpoint[:56], "config")
    env = environment(args.env)
    config = {"EndpointConfigName": config_name, "ProductionVariants": [variant(args, model_name, instance_type)],
              "Tags": tags}  # type: Dict[str, Any]
    # Serverless: SageMaker's key for the image it stores (it has no instance volume).
    storage_key = args.kms_key if args.serverless else aws.volume_key(
        args.kms_key, instance_type, "the endpoint config's KmsKeyId")
    if storage_key:
        config["KmsKeyId"] = storage_key
    if args.async_inference:
        config["AsyncInferenceConfig"] = async_config(args, cloud, endpoint)
        # SageMaker hands /invocations the S3 object whole: the real-time 6 MB cap would refuse big photos.
        env.setdefault("SAGEMAKER_MAX_PAYLOAD_IN_MB", str(limits.ASYNC_MAX_PAYLOAD_MB))
    return [
        ("create_model", model_request(model_name, image, data, role, env, tags, args)),
        ("create_endpoint_config", config),
        ("create_endpoint", {"EndpointName": endpoint, "EndpointConfigName": config_name, "Tags": tags}),
    ]


def variant(args: DeployOptions, model_name: str, instance_type: str) -> Dict[str, Any]:
    """The endpoint config's one production variant: its instances, or its serverless memory and concurrency."""
    if args.serverless:
        return {"VariantName": VARIANT, "ModelName": model_name,
                "ServerlessConfig": {"MemorySizeInMB": args.memory, "MaxConcurrency": args.max_concurrency}}
    scale = scaling_range(args)
    initial = args.instance_count if scale is None else min(max(args.instance_count, scale[0], 1), scale[1])
    return {"VariantName": VARIANT, "ModelName": model_name, "InstanceType": instance_type,
            "InitialInstanceCount": initial}


def check_serverless(args: DeployOptions) -> None:
    """What SageMaker Serverless Inference refuses, refused here before anything is created, each naming its fix."""
    if not args.serverless:
        return
    low, high, step = SERVERLESS_MEMORY_RANGE
    if not low <= args.memory <= high or args.memory % step:
        sizes = [str(m) for m in range(low, high + 1, step)]
        raise LaunchError("MEMORY={}: a serverless endpoint has {} or {} MB: pass one of them".format(
            args.memory, ", ".join(sizes[:-1]), sizes[-1]))
    if not 1 <= args.max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
        raise LaunchError("MAX_CONCURRENCY={}: a serverless endpoint takes 1 to {} concurrent invocations".format(
            args.max_concurrency, SERVERLESS_MAX_CONCURRENCY))
    clashes = [
        (args.async_inference, "ASYNC=1", "an asynchronous endpoint runs on instances: drop one of SERVERLESS=1 and ASYNC=1"),
        (args.min_instances is not None or args.max_instances is not None, "MIN_INSTANCES/MAX_INSTANCES",
         "a serverless endpoint scales itself, up to MAX_CONCURRENCY: drop MIN_INSTANCES/MAX_INSTANCES"),
        (bool(args.instance_type), "INSTANCE_TYPE",
         "SageMaker picks a serverless endpoint's CPUs from MEMORY: drop INSTANCE_TYPE"),
        (args.instance_count != 1, "INSTANCE_COUNT", "a serverless endpoint has no instances: drop INSTANCE_COUNT"),
        (bool(args.vpc_subnets or args.vpc_security_groups), "VPC_SUBNETS/VPC_SECURITY_GROUPS",
         "SageMaker serverless endpoints have no VPC configuration: drop them, or deploy on instances"),
        (args.network_isolation, "NETWORK_ISOLATION=1",
         "SageMaker serverless endpoints have no network isolation: drop it, or deploy on instances"),
        (bool(args.stack) and args.stack != SERVERLESS_STACK, "STACK={}".format(args.stack),
         "a serverless endpoint is CPU only and runs the slim image: drop STACK (or STACK={})".format(SERVERLESS_STACK)),
    ]
    for clash, what, why in clashes:
        if clash:
            raise LaunchError("SERVERLESS=1 with {}: {}".format(what, why))


def async_config(args: DeployOptions, cloud: aws.Aws, endpoint: str) -> Dict[str, Any]:
    if not args.bucket:
        raise LaunchError("ASYNC=1 needs BUCKET=<bucket>: requests and results go to s3://<bucket>/{}/{}/".format(
            args.async_prefix.strip("/"), endpoint))
    bucket = cloud.check_bucket(args.bucket)
    if args.max_concurrent < 1:
        raise LaunchError("--max-concurrent {} must be >= 1".format(args.max_concurrent))
    output = {"S3OutputPath": aws.s3_uri(bucket, args.async_prefix, endpoint, "output"),
              "S3FailurePath": aws.s3_uri(bucket, args.async_prefix, endpoint, "failure")}  # type: Dict[str, Any]
    topics = {}
    for key, topic in (("SuccessTopic", args.sns_success), ("ErrorTopic", args.sns_error)):
        if topic:
            topics[key] = topic if topic.startswith("arn:") else "arn:aws:sns:{}:{}:{}".format(
                cloud.region, cloud.account(), topic)
    if topics:
        output["NotificationConfig"] = topics
    if args.kms_key:
        output["KmsKeyId"] = args.kms_key
    return {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": args.max_concurrent}, "OutputConfig": output}


def scaling_range(args: DeployOptions) -> Optional[Tuple[int, int]]:
    """(min, max) instances, or None: a real-time endpoint scales only when asked to."""
    if not args.async_inference and args.min_instances is None and args.max_instances is None:
        return None
    low = args.min_instances if args.min_instances is not None else (0 if args.async_inference else args.instance_count)
    high = args.max_instances if args.max_instances is not None else max(low, args.instance_count, 1)
    if low < 0 or (low < 1 and not args.async_inference):
        raise LaunchError("MIN_INSTANCES={}: a real-time endpoint keeps at least 1 instance; ASYNC=1 scales to 0".format(low))
    if high < max(low, 1):
        raise LaunchError("MAX_INSTANCES={} is below MIN_INSTANCES={} (or 1)".format(high, low))
    if args.no_wait:
        raise LaunchError("scaling is registered once the endpoint is in service: drop --no-wait")
    return low, high


def resource_id(endpoint: str) -> str:
    return "endpoint/{}/variant/{}".format(endpoint, VARIANT)


def alarm_name(endpoint: str) -> str:
    return endpoint + "-has-backlog-without-capacity"


def scaling_requests(args: DeployOptions, endpoint: str) -> List[Tuple[str, str, Dict[str, Any]]]:
    """[(service, operation, request), ...] that scale the endpoint, in order; [] when it does not scale.

    Async: target tracking on the backlog per instance cannot leave zero instances (no instance, no
    ratio), so a step policy, set off by an alarm on HasBacklogWithoutCapacity, adds the first one,
    as AWS's async-inference guide does.
    """
    scale = scaling_range(args)
    if scale is None:
        return []
    target = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id(endpoint), "ScalableDimension": SCALABLE_DIMENSION}
    cooldowns = {"ScaleInCooldown": SCALE_IN_COOLDOWN, "ScaleOutCooldown": SCALE_OUT_COOLDOWN}
    out = [("application-autoscaling", "register_scalable_target", dict(target, MinCapacity=scale[0], MaxCapacity=scale[1]))]
    if not args.async_inference:
        tracking = dict({"TargetValue": args.target_invocations,
                         "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}},
                        **cooldowns)
        out.append(("application-autoscaling", "put_scaling_policy", dict(
            target, PolicyName=endpoint + "-invocations-per-instance", PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=tracking)))
        return out
    dims = [{"Name": "EndpointName", "Value": endpoint}]
    backlog = dict({"TargetValue": args.target_backlog,
                    "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                                      "Namespace": "AWS/SageMaker", "Dimensions": dims,
                                                      "Statistic": "Average"}}, **cooldowns)
    step_name = endpoint + "-scale-out-from-zero"
    out += [
        ("application-autoscaling", "put_scaling_policy", dict(
            target, PolicyName=endpoint + "-backlog-per-instance", PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=backlog)),
        ("application-autoscaling", "put_scaling_policy", dict(
            target, PolicyName=step_name, PolicyType="StepScaling",
            StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                                            "Cooldown": SCALE_OUT_COOLDOWN,
                                            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]})),
        # Two minutes with a backlog and no instance; AlarmActions is the step policy's ARN, known once it exists.
        ("cloudwatch", "put_metric_alarm", {
            "AlarmName": alarm_name(endpoint), "MetricName": "HasBacklogWithoutCapacity", "Namespace": "AWS/SageMaker",
            "Statistic": "Average", "Dimensions": dims, "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2,
            "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
            "AlarmActions": ["<PolicyARN of {}>".format(step_name)]}),
    ]
    return out


def endpoint_exists(cloud: aws.Aws, endpoint: str) -> bool:
    sm = cloud.client("sagemaker")
    try:
        sm.describe_endpoint(EndpointName=endpoint)
    except sm.exceptions.ClientError:
        return False
    return True


def record_path(record_dir: str, endpoint: str) -> str:
    return os.path.join(record_dir, endpoint + ".json")


def create(args: DeployOptions, cloud: aws.Aws) -> str:
    """The model, endpoint config and endpoint (and its scaling, once in service), each recorded as it is
    made so that a failure half way still lets undeploy clean up: the endpoint's name."""
    requests = build_requests(args, cloud)
    scaling = scaling_requests(args, requests[-1][1]["EndpointName"])
    endpoint = requests[-1][1]["EndpointName"]
    created = {"region": args.region}  # type: Dict[str, Any]

    def record() -> None:
        if not cloud.dry_run:
            os.makedirs(args.record_dir, exist_ok=True)
            with open(record_path(args.record_dir, endpoint), "w") as f:
                json.dump(dict(created, endpoint=endpoint), f, indent=2)

    for operation, request in requests:
        cloud.send("sagemaker", operation, request)
        created[operation[len("create_"):]] = request[NAME_KEYS[operation]]
        record()
    if cloud.dry_run:
        for service, operation, request in scaling:
            cloud.send(service, operation, request)
        return endpoint
    note("creating endpoint {}\n  {}".format(endpoint, training.console_url(args.region, "endpoints", endpoint)))
    if not args.no_wait:
        wait_in_service(cloud, endpoint)
        scale(cloud, endpoint, scaling, created, record)
        note("endpoint {} is in service: make predict ENDPOINT={} IMAGE=<image{}>".format(
            endpoint, endpoint, " or folder" if args.async_inference else ""))
    return endpoint


def wait_in_service(cloud: aws.Aws, endpoint: str) -> None:
    from botocore.exceptions import WaiterError

    sm = cloud.client("sagemaker")
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": max(1, int(training.poll_seconds())), "MaxAttempts": 120})
    except WaiterError:
        reason = sm.describe_endpoint(EndpointName=endpoint).get("FailureReason", "not in service in time")
        raise LaunchError("endpoint {} failed: {} (`make undeploy ENDPOINT={}` cleans up)".format(endpoint, reason, endpoint)) from None


def scale(cloud: aws.Aws, endpoint: str, scaling: List[Tuple[str, str, Dict[str, Any]]], created: Dict[str, Any],
          record: Callable[[], None]) -> None:
    """Registers the endpoint's scaling (target, policies, alarm), recording each step in ``created``."""
    step_arn = None
    for service, operation, request in scaling:
        if operation == "put_metric_alarm":
            request["AlarmActions"] = [step_arn]
        answer = cloud.send(service, operation, request) or {}
        if operation == "register_scalable_target":
            created["scalable_target"] = request["ResourceId"]
        elif operation == "put_scaling_policy":
            created.setdefault("scaling_policies", []).append(request["PolicyName"])
            if request["PolicyType"] == "StepScaling":
                step_arn = answer["PolicyARN"]
        else:
            created.setdefault("alarms", []).append(request["AlarmName"])
        record()
    if scaling:
        low, high = scaling[0][2]["MinCapacity"], scaling[0][2]["MaxCapacity"]
        note("endpoint {} scales between {} and {} instances ({})".format(endpoint, low, high, ", ".join(
            created["scaling_policies"] + created.get("alarms", []))))
