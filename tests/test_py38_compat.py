"""The container code must run on the cu101 base image's Python 3.8 as well as 3.11."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERMIN = str(Path(sys.executable).with_name("vermin"))


def test_package_is_python38_compatible():
    pkg = ROOT / "shared" / "shelfdet"
    cmd = [VERMIN, "--no-tips", "--violations", "--backport", "typing", "-t=3.8-", str(pkg)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, "vermin found code needing Python > 3.8:\n" + out.stdout + out.stderr


def test_vermin_catches_a_violation(tmp_path):
    # Guard against a check that can never fail.
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    cmd = [VERMIN, "--no-tips", "--violations", "-t=3.8-", str(bad)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode != 0
    assert "pattern matching" in out.stdout.lower() or "3.10" in out.stdout, out.stdout + out.stderr
