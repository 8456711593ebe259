"""``make train INSTANCE_TYPE=ml.*``: a SageMaker training job with our training image.

shelfdet.commands.train hands argv over unchanged when it holds ``--instance-type``.
The request pieces (channels, hyperparameters, resources) are shared with tuning.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from shelfdet.core import compat
from shelfdet.core import hyperparameters as hyper
from shelfdet.core import CHANNELS
from shelfdet.core.metrics import METRIC_DEFINITIONS
from shelfdet.launch import aws
from shelfdet.launch.aws import LaunchError, note, s3_uri

CHECKPOINT_DIR = "/opt/ml/checkpoints"
WEIGHTS_DIR = "/opt/ml/input/data/weights"
TENSORBOARD_DIR = "/opt/ml/output/tensorboard"
INPUT_MODES = ("File", "FastFile")
MAX_KEEP_ALIVE = 3600  # SageMaker's limit for a warm pool
TERMINAL = ("Completed", "Failed", "Stopped")
# Describes per waiter call (one hour at the default 30 s); follow() calls the waiter again after them.
WAITER_ATTEMPTS = 120


@dataclasses.dataclass
class NetworkOptions(aws.Options):
    """VPC and network isolation: of training and tuning jobs, and of the models of endpoints and transforms."""
    network_isolation: bool = False
    vpc_subnets: str = ""  # IDs, comma- or space-separated
    vpc_security_groups: str = ""


@dataclasses.dataclass
class JobOptions(NetworkOptions):
    """A training job's (and a tuning job's training jobs') settings."""
    algo: str = "faster_rcnn"
    instance_type: str = ""
    instance_count: int = 1
    spot: bool = False
    max_run: int = 24 * 3600
    max_wait: Optional[int] = None  # default: 2 x max_run
    volume_size: int = 100
    weights: Optional[str] = None  # zoo, none, an https URL or an s3:// URI
    input_mode: str = "File"
    pretrained: Optional[str] = None  # the s3:// prefix `make weights` filled
    no_encrypt_traffic: bool = False
    output_prefix: str = "detectron2/output"
    checkpoint_prefix: str = "detectron2/checkpoints"
    job_name: Optional[str] = None  # default: generated, unique


@dataclasses.dataclass
class TrainOptions(JobOptions):
    keep_alive: int = 0  # seconds in a warm pool
    tensorboard_prefix: str = "detectron2/tensorboard"


def check_vpc(args: NetworkOptions) -> None:
    if bool(_ids(args.vpc_subnets)) != bool(_ids(args.vpc_security_groups)):
        raise LaunchError("VPC_SUBNETS and VPC_SECURITY_GROUPS go together: a VpcConfig needs both")


def vpc_config(args: NetworkOptions) -> Optional[Dict[str, List[str]]]:
    if not _ids(args.vpc_subnets):
        return None
    return {"SecurityGroupIds": _ids(args.vpc_security_groups), "Subnets": _ids(args.vpc_subnets)}


def encrypt_traffic(args: JobOptions) -> bool:
    """EnableInterContainerTrafficEncryption: on for several instances unless ENCRYPT_TRAFFIC=0."""
    if args.instance_count <= 1:
        return False
    if args.no_encrypt_traffic:
        note("note: ENCRYPT_TRAFFIC=0: the traffic between the {} instances is not encrypted".format(args.instance_count))
        return False
    return True


def hyperparameters(algo: str, hp_argv: Sequence[str], extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Every hyperparameter of the table, validated, as SageMaker's strings; HP args override defaults."""
    raw = {k.replace("_", "-"): v for k, v in hyper.parse_cli(hp_argv).items()}
    if raw.get("model-type", algo) != algo:
        raise LaunchError("HP sets model-type {} but ALGO is {}: set ALGO only".format(raw["model-type"], algo))
    raw["model-type"] = algo
    raw.update(extra or {})
    return hyper.as_strings(hyper.parse(raw))


def channel(name: str, uri: str, mode: str = "File") -> Dict[str, Any]:
    return {"ChannelName": name, "InputMode": mode,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                            "S3DataDistributionType": "FullyReplicated"}}}


def data_channels(cloud: aws.Aws, bucket: str, prefix: str, mode: str = "File") -> List[Dict[str, Any]]:
    """training/validation/test images and the manifests as ``annotation``; test only when uploaded."""
    out = []
    for name in CHANNELS:
        uri = s3_uri(bucket, prefix, name)
        if not cloud.check_prefix(uri, name):
            if name == "test":
                note("note: nothing under {}: no test channel (the job skips the final test evaluation)".format(uri))
                continue
            raise LaunchError("no data under {}: run `make upload BUCKET={} PREFIX={}` first".format(uri, bucket, prefix))
        out.append(channel(name, uri, mode))
    manifests = s3_uri(bucket, prefix, "annotations")
    if not cloud.check_prefix(manifests + "training.manifest", "annotation"):
        raise LaunchError("no {}training.manifest: run `make upload BUCKET={} PREFIX={}` first".format(manifests, bucket, prefix))
    out.append(channel("annotation", manifests, mode))
    return out


def weights_input(cloud: aws.Aws, weights: Optional[str]) -> Any:
    """(extra channel or None, hyperparameter value or None) for ``--weights``."""
    if not weights:
        return None, None
    if weights.startswith("s3://"):
        if not cloud.check_prefix(weights, "weights"):
            raise LaunchError("weights {} not found in S3".format(weights))
        name = weights.rstrip("/").rsplit("/", 1)[-1]
        return channel("weights", weights), "{}/{}".format(WEIGHTS_DIR, name)
    if os.path.exists(weights):
        raise LaunchError("WEIGHTS={} is a local file: upload it (aws s3 cp) and pass its s3:// URI".format(weights))
    return None, weights


def _ids(text: Optional[str]) -> List[str]:
    return [t for t in re.split(r"[,\s]+", text or "") if t]


def effective_weights(args: JobOptions, hp_argv: Sequence[str]) -> str:
    return args.weights or hyperparameters(args.algo, hp_argv)["weights"]


def check_locked_down(args: JobOptions, hp_argv: Sequence[str]) -> None:
    """What a job without network or in a VPC would only find out after it started; no AWS call."""
    check_vpc(args)
    if not args.network_isolation:
        return
    weights = effective_weights(args, hp_argv)
    if weights == "zoo" and not args.pretrained:
        raise LaunchError("NETWORK_ISOLATION=1 with weights=zoo: the job cannot download the model zoo's weights; "
                          "run `make weights BUCKET=...` and pass the PRETRAINED=s3://... it prints "
                          "(or WEIGHTS=s3://... of your own, or HP='--weights none')")
    if weights.startswith(("http://", "https://")):
        raise LaunchError("NETWORK_ISOLATION=1 with WEIGHTS={}: the job cannot download it; copy it to S3 and pass "
                          "its s3:// URI".format(weights))


def pretrained_input(cloud: aws.Aws, args: JobOptions, hp_argv: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The ``pretrained`` channel: the folder of zoo checkpoints the container reads weights=zoo from."""
    if not args.pretrained:
        return None
    if effective_weights(args, hp_argv) != "zoo":
        note("note: PRETRAINED is unused: the weights are not zoo")
        return None
    compat.apply()  # the zoo's paths come from Detectron2's model_zoo, imported with the config
    from shelfdet.core.config import ConfigError, zoo_key, zoo_weights

    hps = hyperparameters(args.algo, hp_argv)
    try:
        key = zoo_key(zoo_weights(args.algo, hps["backbone"], hps["lr-schedule"]))
    except ConfigError as err:
        raise LaunchError(str(err)) from None
    if not args.pretrained.startswith("s3://"):
        raise LaunchError("PRETRAINED={}: an s3:// prefix (what `make weights` prints)".format(args.pretrained))
    prefix = args.pretrained.rstrip("/") + "/"
    if not cloud.check_prefix(prefix + key, "pretrained"):
        raise LaunchError("{}{} not found: run `make weights BUCKET=... ALGO={}` (it uploads the zoo's checkpoints "
                          "there)".format(prefix, key, args.algo))
    return channel("pretrained", prefix, args.input_mode)


# Credentials MLflow reads from the environment: never put in a job's Environment, which
# DescribeTrainingJob and the console show to anyone who may describe the job.
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def tracking_environment(args: NetworkOptions) -> Dict[str, str]:
    """MLFLOW_TRACKING_URI (and MLFLOW_EXPERIMENT_NAME) of this shell, for the job's container, where
    the job can reach it; without a user, password or token (see redact.uri)."""
    from shelfdet.core import redact

    raw = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not raw:
        return {}
    uri = redact.uri(raw) or ""
    if not uri.startswith(("http://", "https://", "arn:", "databricks")):
        note("warning: MLFLOW_TRACKING_URI={} is a path on this machine, which the job cannot write: not passed "
             "(use an http(s) URL or a SageMaker MLflow tracking server ARN)".format(uri))
        return {}
    if args.network_isolation:
        note("warning: NETWORK_ISOLATION=1: the job cannot reach MLFLOW_TRACKING_URI; not passed "
             "(TensorBoard event files still go to S3)")
        return {}
    if uri != raw:
        note("note: MLFLOW_TRACKING_URI passed to the job as {}: its user, password or token stay here (a job's "
             "Environment is shown by DescribeTrainingJob); see docs/aws.md for how a job authenticates".format(uri))
    held = [k for k in MLFLOW_CREDENTIALS if os.environ.get(k)]
    if held:
        note("note: {} not passed to the job (a job's Environment is shown by DescribeTrainingJob)".format(", ".join(held)))
    env = {"MLFLOW_TRACKING_URI": uri}
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        env["MLFLOW_EXPERIMENT_NAME"] = os.environ["MLFLOW_EXPERIMENT_NAME"]
    return env


def job_pieces(args: JobOptions, cloud: aws.Aws, checkpoint_name: str,
               hp_argv: Sequence[str] = ()) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The parts a training job and a tuning job's definition have in common, and hyperparameters they imply."""
    if args.instance_count < 1:
        raise LaunchError("INSTANCE_COUNT must be at least 1")
    check_locked_down(args, hp_argv)
    args.stack = args.stack or aws.default_stack(args.instance_type)
    if args.stack == "cpu" and aws.is_gpu_instance(args.instance_type):
        note("warning: STACK=cpu on GPU instances ({}): the job will not use the GPUs; pass STACK=cu101 or cu12".format(
            args.instance_type))
    role = cloud.role_arn(args.role)
    bucket = cloud.check_bucket(args.bucket)
    image = cloud.image_uri("training", args.stack, args.image_uri)
    inputs = data_channels(cloud, bucket, args.prefix, args.input_mode)
    weights_channel, weights_hp = weights_input(cloud, args.weights)
    if weights_channel:
        inputs.append(weights_channel)
    pretrained = pretrained_input(cloud, args, hp_argv)
    if pretrained:
        inputs.append(pretrained)
    stopping = {"MaxRuntimeInSeconds": args.max_run}
    if args.spot:
        max_wait = args.max_wait or 2 * args.max_run
        if max_wait <= args.max_run:
            raise LaunchError("--max-wait ({}) must exceed --max-run ({}) for spot training".format(max_wait, args.max_run))
        stopping["MaxWaitTimeInSeconds"] = max_wait
    pieces = {
        "RoleArn": role,
        # SageMaker runs `docker run IMAGE train`: the image's entrypoint dispatches on it.
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": args.input_mode,
                                   "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS]},
        "InputDataConfig": inputs,
        "OutputDataConfig": {"S3OutputPath": s3_uri(bucket, args.output_prefix)},
        "ResourceConfig": {"InstanceType": args.instance_type, "InstanceCount": args.instance_count,
                           "VolumeSizeInGB": args.volume_size},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": bool(args.spot),
        "EnableNetworkIsolation": bool(args.network_isolation),
        "EnableInterContainerTrafficEncryption": encrypt_traffic(args),
        "CheckpointConfig": {"S3Uri": s3_uri(bucket, args.checkpoint_prefix, checkpoint_name), "LocalPath": CHECKPOINT_DIR},
    }
    if args.kms_key:
        pieces["OutputDataConfig"]["KmsKeyId"] = args.kms_key
    volume_key = aws.volume_key(args.kms_key, args.instance_type, "VolumeKmsKeyId")
    if volume_key:
        pieces["ResourceConfig"]["VolumeKmsKeyId"] = volume_key
    tracking = tracking_environment(args)
    if tracking:
        pieces["Environment"] = tracking
    vpc = vpc_config(args)
    if vpc:
        pieces["VpcConfig"] = vpc
    return pieces, ({"weights": weights_hp} if weights_hp else {})


def build_request(args: TrainOptions, hp_argv: Sequence[str], cloud: aws.Aws) -> Dict[str, Any]:
    if not 0 <= args.keep_alive <= MAX_KEEP_ALIVE:
        raise LaunchError("KEEP_ALIVE={}: seconds from 0 to {} (SageMaker's warm pool limit)".format(
            args.keep_alive, MAX_KEEP_ALIVE))
    name = args.job_name or aws.job_name("detectron2", args.algo, aws.timestamp())
    pieces, implied = job_pieces(args, cloud, name, hp_argv)
    if args.keep_alive:
        pieces["ResourceConfig"]["KeepAlivePeriodInSeconds"] = args.keep_alive
    request = {"TrainingJobName": name}
    request.update(pieces)
    request["HyperParameters"] = hyperparameters(args.algo, hp_argv, implied)
    # SageMaker uploads what the job writes there while it runs: `make tensorboard JOB=<name>` reads it back.
    request["TensorBoardOutputConfig"] = {"S3OutputPath": s3_uri(aws.split_s3(request["OutputDataConfig"]["S3OutputPath"])[0], args.tensorboard_prefix, name),
                                          "LocalPath": TENSORBOARD_DIR}
    return request


def console_url(region: str, kind: str, name: str) -> str:
    return "https://{0}.console.aws.amazon.com/sagemaker/home?region={0}#/{1}/{2}".format(region, kind, name)


# ---- following a job -------------------------------------------------------------

class LogStreamer:
    """Hands a job's CloudWatch log lines to ``say`` once each, across its hosts' streams."""

    def __init__(self, cloud: aws.Aws, group: str, job: str, say: Callable[[str], None] = note) -> None:
        self.logs = cloud.client("logs")
        self.group, self.job, self.say = group, job, say
        self.tokens = {}  # type: Dict[str, Optional[str]]

    def poll(self) -> None:
        try:
            streams = self.logs.describe_log_streams(logGroupName=self.group, logStreamNamePrefix=self.job + "/")
        except self.logs.exceptions.ResourceNotFoundException:
            return  # no log group yet (or none in this account)
        for stream in streams.get("logStreams", []):
            name = stream["logStreamName"]
            while True:
                kwargs = {"logGroupName": self.group, "logStreamName": name, "startFromHead": True}
                if self.tokens.get(name):
                    kwargs["nextToken"] = self.tokens[name]
                out = self.logs.get_log_events(**kwargs)
                for event in out.get("events", []):
                    host = name[len(self.job) + 1:].split("/")[0]
                    self.say("[{}] {}".format(host, event.get("message", "").rstrip()))
                token = out.get("nextForwardToken")
                if not token or token == self.tokens.get(name):
                    break
                self.tokens[name] = token


def poll_seconds() -> float:
    """Seconds between two describes of a job (the waiters' Delay); tests set SHELFDET_POLL_SECONDS=0."""
    return float(os.environ.get("SHELFDET_POLL_SECONDS", "30"))


def follow(cloud: aws.Aws, waiter: str, params: Dict[str, str], status_key: str,
           show: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    """Waits with boto3's SageMaker waiter ``waiter`` until the job ends; returns its last description.

    The waiter describes the job every poll_seconds() (WaiterConfig Delay), and ``show``
    sees each of those descriptions as it arrives (status lines, log lines). Completed
    and Stopped end the waiter, Failed ends it with a WaiterError: either way the caller
    gets the last description and judges its status. SageMaker ends a job at its own
    stopping condition, so this wait has no limit: when MaxAttempts run out while the
    job still runs, the waiter starts again.
    """
    from botocore.exceptions import WaiterError

    sm = cloud.client("sagemaker")
    wait_for = sm.get_waiter(waiter)
    last = {}  # type: Dict[str, Any]

    def described(parsed: Dict[str, Any], **_: Any) -> None:
        if "Error" not in parsed:
            last["desc"] = parsed
            show(parsed)

    event = "after-call.sagemaker." + wait_for.config.operation
    sm.meta.events.register(event, described)
    try:
        while True:
            try:
                wait_for.wait(WaiterConfig={"Delay": poll_seconds(), "MaxAttempts": WAITER_ATTEMPTS}, **params)
                return last["desc"]
            except WaiterError as err:
                response = err.last_response or {}
                if "Error" in response:
                    error = response["Error"]
                    raise LaunchError("{} {}: {}: {}".format(wait_for.config.operation, " ".join(params.values()),
                                                             error.get("Code", "Error"), error.get("Message", ""))) from None
                if response.get(status_key) in TERMINAL:
                    return response  # Failed: the waiter's failure state
    finally:
        sm.meta.events.unregister(event, described)


def wait(cloud: aws.Aws, name: str, say: Callable[[str], None] = note) -> Dict[str, Any]:
    """Follows the job (status changes, and its log lines to ``say``) until it ends; returns the last description."""
    logs = LogStreamer(cloud, "/aws/sagemaker/TrainingJobs", name, say)
    seen = []  # type: List[Tuple[str, Optional[str]]]

    def show(desc: Dict[str, Any]) -> None:
        state = (desc["TrainingJobStatus"], desc.get("SecondaryStatus"))
        if state not in seen[-1:]:
            note("[{}] {} / {}".format(name, *state))
            seen.append(state)
        logs.poll()

    return follow(cloud, "training_job_completed_or_stopped", {"TrainingJobName": name}, "TrainingJobStatus", show)


def report(desc: Dict[str, Any]) -> List[str]:
    """What an ended job left: its model artefact, metrics and bill; a job that did not complete raises."""
    name, status = desc["TrainingJobName"], desc["TrainingJobStatus"]
    if status != "Completed":
        raise LaunchError("training job {} {}: {}".format(name, status.lower(), desc.get("FailureReason") or "no reason given"))
    lines = ["model artefact: {}".format(desc.get("ModelArtifacts", {}).get("S3ModelArtifacts", "?"))]
    metrics = desc.get("FinalMetricDataList", [])
    lines += ["metric {}: {}".format(m.get("MetricName"), m.get("Value")) for m in metrics]
    if not metrics:
        lines.append("metrics: none reported")
    line = bill(desc)
    return lines + [line] if line else lines


def bill(desc: Dict[str, Any]) -> Optional[str]:
    """One line: billable seconds, instance-hours, and what spot saved (DescribeTrainingJob's own numbers)."""
    billable = desc.get("BillableTimeInSeconds")
    if billable is None:
        return None
    resources = desc.get("ResourceConfig", {})
    count = int(resources.get("InstanceCount", 1))
    # Billable time is wall-clock per instance; SageMaker bills it once per instance.
    line = "bill: {} billable seconds x {} {} = {:.3f} instance-hours".format(
        billable, count, resources.get("InstanceType", "instance"), billable * count / 3600.0)
    trained = desc.get("TrainingTimeInSeconds")
    if desc.get("EnableManagedSpotTraining") and trained:
        line += "; spot saved {:.0f}% ({} s trained)".format(100.0 * (1.0 - float(billable) / trained), trained)
    elif desc.get("EnableManagedSpotTraining"):
        line += "; spot savings unknown (no training time reported)"
    return line
