"""Preflight of an image build: is every external part a stack's base image fetches reachable?

    PYTHONPATH=shared python3 -m shelfdet.commands.preflight <stack>   # make build-base runs this first

Standard library only (shelfdet.images.preflight): it runs before any virtual environment exists.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from shelfdet.images import preflight as pf
from shelfdet.launch import image_names


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shelfdet preflight", description=__doc__.splitlines()[0])
    p.add_argument("stack", help="one of: " + ", ".join(pf.all_stacks()))
    p.add_argument("--timeout", type=float, default=pf.default_timeout(),
                   help="seconds per connect or read (default {:g}; SHELFDET_PREFLIGHT_TIMEOUT)".format(pf.TIMEOUT))
    args = p.parse_args(argv)
    if pf.skipped():
        say("preflight: skipped (SHELFDET_PREFLIGHT=0)")
        return 0
    if args.stack not in pf.all_stacks():
        say("error: preflight: unknown stack '{}' (one of: {})".format(args.stack, ", ".join(pf.all_stacks())))
        return 2
    try:
        versions = image_names.read_versions()
    except (image_names.ImageError, OSError) as err:
        say("error: preflight: {}".format(err))
        return 2
    return 0 if pf.check(args.stack, versions, args.timeout, say) else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Checks still in flight (a built base stops the rest) are daemon threads inside DNS or
    # socket calls; interpreter finalization under them has crashed Python (SIGSEGV, seen in CI).
    os._exit(code)
