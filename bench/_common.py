"""What every benchmark writes: bench/results/<name>.json with the machine it ran on."""
from __future__ import annotations

import glob
import json
import os
import platform
import sys
from typing import Any, Dict

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "shared") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "shared"))

from shelfdet.core import compat  # noqa: E402  (from the checkout's shared/, put on the path above)

# The benchmarks' process entry: every script imports this module before anything of Detectron2's, so
# this release's differences are patched (compat.apply) before Detectron2 is imported.
compat.apply()
# The pages whose generated blocks the benchmarks keep current (docs/benchmarks.md, docs/training.md, ...).
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def machine(**extra: Any) -> Dict[str, Any]:
    info = {"cpus": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    info.update(extra)
    return info


def write_result(name: str, metrics: Dict[str, Any], target: str, **extra: Any) -> Dict[str, Any]:
    result = {"name": name, "metrics": metrics, "target": target}
    result.update(extra)
    result.setdefault("machine", machine())
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


def update_readme(marker: str, text: str) -> None:
    """Replaces what stands between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in the page that has them."""
    from shelfdet.core import pages

    for page in PAGES:
        with open(page) as f:
            body = f.read()
        if pages.block(body, marker) is None:
            continue
        with open(page, "w") as f:
            f.write(pages.replace_block(body, marker, text))
