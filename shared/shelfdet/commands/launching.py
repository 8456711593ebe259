"""What the AWS commands share: the Makefile's common flags, the launchers' progress lines on
stderr, their results on stdout, and one ``error:`` line for a missing prerequisite or an AWS error."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, List, Sequence, Tuple

from shelfdet.launch import aws
from shelfdet.launch.aws import LaunchError, NO_CREDENTIALS


# ---- flags ---------------------------------------------------------------------------

def add_common(parser: argparse.ArgumentParser, stack: bool = True) -> None:
    """The flags the Makefile's AWS_FLAGS (and --stack) pass to every target."""
    parser.add_argument("--region", required=True, help="AWS region, e.g. us-east-2")
    parser.add_argument("--dry-run", action="store_true", help="print the API requests as JSON and call nothing")
    parser.add_argument("--role", help="SageMaker execution role: ARN or name (default: found by name)")
    parser.add_argument("--bucket", help="S3 bucket holding the uploaded data and the outputs")
    parser.add_argument("--prefix", default=aws.DEFAULT_PREFIX, help="S3 prefix of the uploaded data")
    parser.add_argument("--kms-key", help="KMS key (ID, ARN, alias/<name> or its ARN) for volumes, outputs and uploads")
    if stack:
        parser.add_argument("--stack", default=None,
                            help="image stack: cpu, cu101 or cu12 (default: from the instance type)")
        parser.add_argument("--image-uri", help="use this image instead of ours from ECR")


def add_network_flags(parser: argparse.ArgumentParser, isolation: str) -> None:
    """VPC and network isolation: for training and tuning jobs, and for the models of endpoints and transforms."""
    parser.add_argument("--network-isolation", action="store_true", help="no network in the container: " + isolation)
    parser.add_argument("--vpc-subnets", default="", help="subnet IDs (comma- or space-separated) for VpcConfig")
    parser.add_argument("--vpc-security-groups", default="", help="security group IDs for VpcConfig")


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by training and tuning."""
    from shelfdet.core.hyperparameters import ALGORITHMS
    from shelfdet.launch.training import INPUT_MODES

    parser.add_argument("--algo", default="faster_rcnn", choices=ALGORITHMS)
    parser.add_argument("--instance-type", required=True)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--spot", action="store_true", help="managed spot training (checkpoints resume it)")
    parser.add_argument("--max-run", type=int, default=24 * 3600, help="seconds of training at most")
    parser.add_argument("--max-wait", type=int, help="seconds including waiting for spot capacity (default 2 x max-run)")
    parser.add_argument("--volume-size", type=int, default=100, help="GB of EBS per instance (the data is copied there)")
    parser.add_argument("--weights", help="initial weights: zoo, none, an https URL or an s3:// URI")
    parser.add_argument("--input-mode", default="File", choices=INPUT_MODES,
                        help="File copies the channels to EBS first; FastFile streams them from S3 at the same paths")
    add_network_flags(parser, "weights=zoo then needs --pretrained")
    parser.add_argument("--pretrained", help="s3:// prefix holding the model zoo's checkpoints (`make weights`): "
                                             "weights=zoo is read from it, not downloaded")
    parser.add_argument("--no-encrypt-traffic", action="store_true",
                        help="with several instances, leave the traffic between them unencrypted (faster)")
    parser.add_argument("--output-prefix", default="detectron2/output", help="S3 prefix of model artefacts")
    parser.add_argument("--checkpoint-prefix", default="detectron2/checkpoints", help="S3 prefix of checkpoints")
    parser.add_argument("--job-name", help="explicit job name (default: generated, unique)")
    add_common(parser)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model a deploy or a transform serves, and where it runs."""
    parser.add_argument("--model", help="model.tar.gz S3 URI or training job name (default: the newest completed detectron2-* job)")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment (repeatable)")
    parser.add_argument("--output-prefix", default="detectron2/output", help="S3 prefix training wrote artefacts to")
    add_network_flags(parser, "the serving container needs none (SageMaker itself reads the model and S3)")
    add_common(parser)


# ---- output --------------------------------------------------------------------------

def split_hp(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """argv before ``--`` (the command's own flags) and after it (hyperparameters)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def say(text: str) -> None:
    """A result line on stdout (what a script reads: a job name, a URI, a dry run's requests)."""
    print(text, flush=True)


class _Stderr(logging.Handler):
    """Progress lines as they are, on the sys.stderr of the moment they are written."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def show_progress() -> None:
    """The launchers' progress lines (``shelfdet.launch``'s log) on stderr, once per process."""
    logger = logging.getLogger("shelfdet.launch")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cloud(args: argparse.Namespace) -> aws.Aws:
    """The session of the command's --region; a dry run's requests go to stdout."""
    return aws.Aws(args.region, dry_run=args.dry_run, show=say)


# ---- errors --------------------------------------------------------------------------

def run(body: Callable[[List[str]], Any], argv: Sequence[str]) -> int:
    """Runs a launcher; a missing prerequisite or an AWS error becomes one line on stderr and exit 1."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError, PartialCredentialsError)

    from shelfdet.core.hyperparameters import HyperparameterError

    show_progress()
    try:
        return int(body(list(argv)) or 0)
    except (LaunchError, HyperparameterError) as err:
        message = str(err)
    except (NoCredentialsError, PartialCredentialsError):
        message = NO_CREDENTIALS
    except NoRegionError:
        message = "no region: pass REGION=<region>"
    except EndpointConnectionError as err:
        message = "cannot reach {} (check REGION and the network)".format(getattr(err, "kwargs", {}).get("endpoint_url", "AWS"))
    except ClientError as err:
        message = client_error(err)
    except BotoCoreError as err:
        message = str(err)
    except KeyboardInterrupt:
        message = "interrupted (jobs already created keep running; see the SageMaker console)"
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)
    return 1


def client_error(err: Any) -> str:
    info = err.response.get("Error", {})
    op = getattr(err, "operation_name", "request")
    code, text = info.get("Code", "Error"), info.get("Message", "")
    if code in ("InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
                "SignatureDoesNotMatch"):
        return "AWS rejected the credentials ({}): {}; refresh them (`aws sso login`, new keys)".format(code, text)
    return "{} failed: {}: {}".format(op, code, text)
