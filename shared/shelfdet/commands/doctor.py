"""``make doctor``: what this machine and account can do, as a table (part, what, status, detail)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence

from shelfdet.images import doctor
from shelfdet.images import preflight as pf
from shelfdet.launch import image_names


def stacks_arg(values: Optional[Sequence[str]]) -> List[str]:
    out = []  # type: List[str]
    for value in values or []:
        for name in re.split(r"[,\s]+", value):
            if name and name not in out:
                out.append(name)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet doctor", description=__doc__.splitlines()[0])
    p.add_argument("--stack", action="append",
                   help="stack(s) whose build to check (default: {}, the pushable ones)".format(
                       ", ".join(image_names.STACKS)))
    p.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                   or "us-east-2", help="AWS region (make doctor passes REGION)")
    p.add_argument("--role", help="SageMaker execution role, ARN or name (default: found by name, as launchers do)")
    p.add_argument("--timeout", type=float, default=pf.default_timeout(),
                   help="seconds per connect or read (default {:g})".format(pf.TIMEOUT))
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    names = stacks_arg(args.stack) or list(image_names.STACKS)
    unknown = [n for n in names if n not in pf.all_stacks()]
    if unknown:
        print("error: unknown stack '{}' (one of: {})".format(unknown[0], ", ".join(pf.all_stacks())),
              file=sys.stderr)
        return 2
    try:
        versions = image_names.read_versions()
    except (image_names.ImageError, OSError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    findings = doctor.examine(names, versions, args.region, args.role, args.timeout)
    print(doctor.report(findings), flush=True)
    passed, lines = doctor.verdict(findings)
    for line in lines:
        print(line, file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
