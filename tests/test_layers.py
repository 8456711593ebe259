"""The package's rooms keep their order (the repo's .importlinter, checked by import-linter).

Rooms, top to bottom: commands > images > launch > serving | training > data > core. A room imports
only from itself and the rooms below it (serving and training never from each other); only
shelfdet.commands parses a command line (argparse) or prints: the rooms below are libraries that
return values, raise errors or log.

`lint-imports` runs over the repo's shared/shelfdet, also in the test image, whose venv holds an
installed copy of the package: PYTHONPATH puts the repo's first.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shared" / "shelfdet"
CONFIG = ROOT / ".importlinter"
LIBRARY_ROOMS = ("core", "data", "training", "serving", "launch", "images")
LAYERS = "Rooms in layers (commands > images > launch > serving|training > data > core)"
ARGPARSE = "argparse in shelfdet.commands only"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports is not installed beside {}: import-linter is pinned in versions.env "
                    "(LOCAL_REQUIREMENTS, TEST_REQUIREMENTS); run make setup".format(sys.executable))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_parent)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([str(exe), str(CONFIG), "--no-cache"], capture_output=True, text=True, env=env,
                          cwd=str(package_parent), timeout=300)


def test_the_rooms_keep_their_contracts():
    proc = lint_imports(PACKAGE.parent)
    assert proc.returncode == 0, "lint-imports found imports across the rooms' order:\n" + proc.stdout + proc.stderr


@pytest.mark.parametrize("module, line, contract, named", [
    ("core/compat.py", "import argparse", ARGPARSE, "shelfdet.core.compat -> argparse"),
    ("core/config.py", "from shelfdet.commands import cli", LAYERS, "shelfdet.core.config -> shelfdet.commands.cli"),
], ids=["core-imports-argparse", "core-imports-a-command"])
def test_a_core_module_reaching_up_breaks_its_contract(tmp_path, module, line, contract, named):
    copy = tmp_path / "shelfdet"
    shutil.copytree(str(PACKAGE), str(copy), ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    text = path.read_text()
    # After the docstring and `from __future__`, which must stay first.
    anchor = "from __future__ import annotations\n"
    assert anchor in text, module
    path.write_text(text.replace(anchor, anchor + line + "  # added by the test\n", 1))
    proc = lint_imports(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert any(l.startswith(contract) and "BROKEN" in l[len(contract):] for l in out.splitlines()), out
    assert named in out, out


def _print_calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            yield node.lineno


def test_only_commands_print():
    found = ["{}:{}".format(path.relative_to(ROOT), line)
             for room in LIBRARY_ROOMS for path in sorted((PACKAGE / room).rglob("*.py"))
             for line in sorted(set(_print_calls(path)))]
    assert not found, ("print() outside shelfdet.commands (a library returns values, raises, logs or calls a "
                       "passed-in callback):\n" + "\n".join(found))
