"""``python -m shelfdet data-stats DATA_DIR``: objects per image and box sizes of a built dataset.

Read from the manifests (what training sees), so it works on the synthetic
presets and on a converted SKU-110K alike. Prints JSON, or with ``--markdown``
the README's table rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from shelfdet.data import DEFAULT_LABEL, stats


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shelfdet data-stats", description=__doc__.split("\n")[0])
    p.add_argument("data_dir")
    p.add_argument("--label", default=DEFAULT_LABEL)
    p.add_argument("--markdown", action="store_true", help="README table rows instead of JSON")
    args = p.parse_args(argv)
    s = stats.of_data_dir(args.data_dir, args.label)
    if not s["images"]:
        print("error: no manifest with images under {}/annotations (run `make data` first?)".format(args.data_dir),
              file=sys.stderr)
        return 2
    print(stats.markdown(s, args.data_dir) if args.markdown else json.dumps(s, indent=1))
    return 0
