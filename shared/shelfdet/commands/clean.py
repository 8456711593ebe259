"""``make clean``: removes what the project wrote, by its own records, and says what it removes.

- a data folder (``DATA_DIR``): the files its ``written.json`` names (``make data`` keeps it), then
  the folder itself when nothing else is left in it; one built before that record existed is read
  by its ``report.json`` and manifests. A folder with neither is left alone, with a line saying so.
- ``runs/``: every run folder (``runs/<run>``, known by ``input/config/hyperparameters.json``), and
  the files that ``make tensorboard JOB=`` and ``make transform`` downloaded (their ``written.json``).
  ``runs/deployments`` is never touched: ``make undeploy`` needs its records.

Standard library only, so ``make clean`` works before ``make setup``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Callable, List, Optional

from shelfdet.data import DataError
from shelfdet.data.written import RECORD, Written

RUN_FILE = os.path.join("input", "config", "hyperparameters.json")
DEPLOYMENTS = "deployments"


def clean_data(folder: str, say: Callable[[str], None]) -> bool:
    """Removes what make data wrote in ``folder``; False when it holds no record of make data."""
    if not os.path.isdir(folder):
        say("clean: {}: no such folder, nothing to remove".format(folder))
        return True
    written = Written(folder)
    if not written.exists:
        say("clean: {}: left as it is: no {} or report.json of make data in it".format(folder, RECORD))
        return False
    done = written.clean()
    for top, count in sorted(done["removed"].items()):
        if top.endswith("/"):
            say("clean: removed {} file(s) make data wrote in {}".format(count, os.path.join(folder, top)))
        else:
            say("clean: removed {}".format(os.path.join(folder, top)))
    if done["kept"]:
        say("clean: kept {}: it holds files make data did not write ({})".format(folder, ", ".join(done["kept"][:5])
                                                                               + (", ..." if len(done["kept"]) > 5 else "")))
    else:
        say("clean: removed {}".format(folder))
    return True


def _downloads(folder: str, say: Callable[[str], None]) -> None:
    """A folder of downloads with its record (runs/sagemaker/<job>, runs/transform/<job>)."""
    written = Written(folder, legacy=False)
    if not written.exists:
        say("clean: kept {}: no {} names what the project wrote there".format(folder, RECORD))
        return
    done = written.clean()
    say("clean: removed the {} downloaded file(s) in {}{}".format(
        sum(done["removed"].values()), folder, "" if done["kept"] else " and the folder"))


def clean_runs(runs_dir: str, say: Callable[[str], None]) -> None:
    if not os.path.isdir(runs_dir):
        return
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name)
        if name == DEPLOYMENTS:
            say("clean: kept {}: make undeploy needs the deployment records in it".format(path))
        elif os.path.islink(path) or not os.path.isdir(path):
            say("clean: kept {}: not a run folder".format(path))
        elif os.path.isfile(os.path.join(path, RUN_FILE)):
            shutil.rmtree(path)  # links in it (the channels) are removed as links: the data stays
            say("clean: removed {}".format(path))
        elif os.path.isfile(os.path.join(path, RECORD)):
            _downloads(path, say)
        else:
            for sub in sorted(os.listdir(path)):
                inner = os.path.join(path, sub)
                if os.path.isdir(inner) and not os.path.islink(inner) and os.path.isfile(os.path.join(inner, RECORD)):
                    _downloads(inner, say)
                else:
                    say("clean: kept {}: neither a run folder nor downloads with a {}".format(inner, RECORD))
            try:
                os.rmdir(path)
            except OSError:
                pass
    try:
        os.rmdir(runs_dir)
    except OSError:  # something was kept
        pass


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shelfdet clean", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", action="append", default=[], help="a data folder make data wrote (repeatable)")
    p.add_argument("--runs-dir", default="runs")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        for folder in args.data_dir:
            clean_data(folder, say)
        clean_runs(args.runs_dir, say)
    except DataError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    return 0
