"""``make deploy``: model + endpoint config + endpoint with our serving image."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import deploy
from shelfdet.launch.deploy import (ASYNC_CONCURRENCY, ASYNC_PREFIX, BACKLOG_TARGET, DEFAULT_INSTANCE_TYPE,
                                    INVOCATIONS_TARGET, RECORD_DIR, SERVERLESS_CONCURRENCY, SERVERLESS_MEMORY,
                                    SERVERLESS_STACK)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet deploy", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="endpoint name (default: generated)")
    p.add_argument("--instance-type", default=None,
                   help="default: {} (none with --serverless)".format(DEFAULT_INSTANCE_TYPE))
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
    p.add_argument("--serverless", action="store_true",
                   help="serverless endpoint (no instances, CPU only) on the {} serving image: the model must hold "
                   "an OpenVINO or ONNX export".format(SERVERLESS_STACK))
    p.add_argument("--memory", type=int, default=SERVERLESS_MEMORY,
                   help="serverless: MemorySizeInMB, 1024 to 6144 in steps of 1024 (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=SERVERLESS_CONCURRENCY,
                   help="serverless: MaxConcurrency, concurrent invocations, 1 to 200 (default: %(default)s)")
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
