"""``make deploy``: model + endpoint config + endpoint with our serving image."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import deploy
from shelfdet.launch.deploy import ASYNC_CONCURRENCY, ASYNC_PREFIX, BACKLOG_TARGET, INVOCATIONS_TARGET, RECORD_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet deploy", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="endpoint name (default: generated)")
    p.add_argument("--instance-type", default="ml.g4dn.xlarge")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is being created")
    p.add_argument("--record-dir", default=RECORD_DIR)
    p.add_argument("--async", dest="async_inference", action="store_true",
                   help="asynchronous endpoint: inputs and results on S3 under --bucket, scales to zero")
    p.add_argument("--async-prefix", default=ASYNC_PREFIX,
                   help="S3 prefix of the async endpoint's folders: <prefix>/<endpoint>/{input,output,failure}/")
    p.add_argument("--max-concurrent", type=int, default=ASYNC_CONCURRENCY,
                   help="async: MaxConcurrentInvocationsPerInstance")
    p.add_argument("--sns-success", help="async: SNS topic (ARN or name) told of each result")
    p.add_argument("--sns-error", help="async: SNS topic (ARN or name) told of each failure")
    p.add_argument("--min-instances", type=int, help="scale down to this many (async default: 0)")
    p.add_argument("--max-instances", type=int, help="scale up to this many (default: the larger of "
                   "--min-instances and --instance-count)")
    p.add_argument("--target-backlog", type=float, default=BACKLOG_TARGET,
                   help="async: ApproximateBacklogSizePerInstance target tracking keeps")
    p.add_argument("--target-invocations", type=float, default=INVOCATIONS_TARGET,
                   help="real-time: SageMakerVariantInvocationsPerInstance (per minute) target tracking keeps")
    launching.add_model_flags(p)
    return p


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    endpoint = deploy.create(deploy.DeployOptions.of(args), launching.cloud(args))
    if not args.dry_run:
        launching.say(endpoint)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
