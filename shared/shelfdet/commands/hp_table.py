"""``python -m shelfdet hp-table [--write PAGE]``: the hyperparameter table, printed or written in place
between a page's ``<!-- hp-table:start -->`` and ``<!-- hp-table:end -->`` (docs/training.md)."""
from __future__ import annotations

import argparse
import sys
from typing import List

from shelfdet.core import pages
from shelfdet.core.hyperparameters import markdown_table

BLOCK = "hp-table"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shelfdet hp-table", description=__doc__)
    parser.add_argument("--write", metavar="PAGE", help="replace the table between the page's hp-table markers")
    args = parser.parse_args(argv)
    table = markdown_table()
    if not args.write:
        print(table)
        return 0
    with open(args.write) as f:
        page = f.read()
    if pages.block(page, BLOCK) is None:
        print("error: {} has no {} ... {} markers to write the table between".format(args.write, *pages.markers(BLOCK)),
              file=sys.stderr)
        return 2
    with open(args.write, "w") as f:
        f.write(pages.replace_block(page, BLOCK, table))
    print("{}: hyperparameter table written ({} rows)".format(args.write, table.count("\n") - 1))
    return 0
