"""``python -m shelfdet hp-table [--write PAGE]``: the hyperparameter table, printed or written in place
between a page's ``<!-- hp-table:start -->`` and ``<!-- hp-table:end -->`` (docs/training.md)."""
from __future__ import annotations

import argparse
import sys
from typing import List

from .hyperparameters import markdown_table

START, END = "<!-- hp-table:start -->", "<!-- hp-table:end -->"


def between_markers(page: str) -> str:
    """The table a page holds now ("" when it has no markers)."""
    if START not in page or END not in page:
        return ""
    return page.split(START, 1)[1].split(END, 1)[0].strip("\n")


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
    if START not in page or END not in page:
        print("error: {} has no {} ... {} markers to write the table between".format(args.write, START, END),
              file=sys.stderr)
        return 2
    head, rest = page.split(START, 1)
    with open(args.write, "w") as f:
        f.write(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    print("{}: hyperparameter table written ({} rows)".format(args.write, table.count("\n") - 1))
    return 0
