"""``make push-base|push-training|push-serving``: build if missing, tag, create the ECR repository, log in, push."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.images import codebuild, push
from shelfdet.launch import image_names
from shelfdet.launch.aws import LaunchError, note


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet push", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=push.KINDS)
    # No argparse choices: image_names.image() refuses an unknown or test-only stack in one line.
    p.add_argument("--stack",
                   help="image stack: {} (default: {}, the design card's)".format(" | ".join(image_names.STACKS), image_names.CARD_STACK))
    p.add_argument("--no-build", action="store_true", help="fail instead of building a missing image")
    add_builder_flags(p)
    launching.add_common(p, stack=False)
    return p


def add_builder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--builder", choices=("docker", "codebuild"), default="docker",
                   help="docker: build and push from here; codebuild: on AWS CodeBuild (BUILDER=codebuild)")
    p.add_argument("--project", default=image_names.PROJECT, help="CodeBuild project (BUILDER=codebuild; default: %(default)s)")
    p.add_argument("--compute-type", default=codebuild.COMPUTE_TYPE, help="CodeBuild compute type (default: %(default)s)")
    p.add_argument("--build-image", default=codebuild.BUILD_IMAGE, help="CodeBuild image (default: %(default)s)")


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    if args.stack is None:
        args.stack = image_names.CARD_STACK
        note("STACK not given: the design card's {} (STACK=<stack> pushes another)".format(args.stack))
    try:
        image = push.image_of(args.kind, args.stack)
    except image_names.ImageError as err:
        raise LaunchError(str(err)) from None
    cloud = launching.cloud(args)
    if args.builder == "codebuild":
        uri = codebuild.push(codebuild.BuildOptions.of(args), cloud, image)
    else:
        uri = push.push(cloud, image, args.no_build)
    if uri is not None:
        launching.say(uri)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
