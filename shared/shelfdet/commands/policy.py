"""``make policy``: an IAM policy template of docs/ filled in for this account, on stdout."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import image_names, policy


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet policy", description=policy.__doc__.splitlines()[0])
    p.add_argument("--template", required=True, help="the policy template (docs/iam-policy.json or docs/iam-bootstrap.json)")
    p.add_argument("--region", required=True, help="AWS region the project runs in")
    p.add_argument("--account", help="AWS account ID (default: the one the credentials belong to)")
    p.add_argument("--bucket", help="S3 bucket of the data, outputs and build zips (BUCKET)")
    p.add_argument("--role", help="SageMaker execution role: ARN or name (ROLE)")
    p.add_argument("--codebuild-role", default=image_names.ROLE_NAME,
                   help="CodeBuild service role: ARN or name (default: %(default)s, made by make bootstrap)")
    p.add_argument("--kms-key", help="KMS key ID or key ARN (KMS_KEY; its statements are left out without one)")
    return p


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    document = policy.filled(args.template, args.region, args.account, args.bucket, args.role, args.codebuild_role,
                             args.kms_key)
    launching.say(json.dumps(document, indent=2))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
