"""docs/troubleshooting.md has every one-line error the product prints, collected from the code
(tests/messages.py), each with a cause and a fix; and the lines real commands print are found there
as printed."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import messages as M

ROOT = M.ROOT


def test_every_error_in_the_code_is_on_the_page():
    missing = M.undocumented(M.collect(), M.documented())
    assert not missing, "docs/troubleshooting.md lacks {} message(s); add these rows (python tests/messages.py):\n{}".format(
        len(missing), "\n".join(M.row(m) for m in missing))


def test_every_error_row_on_the_page_is_still_in_the_code():
    old = M.stale(M.collect(), M.documented())
    assert not old, "no message in the code reads as these rows any more (reworded or removed?): {}".format(old)


def test_every_row_gives_a_cause_and_a_fix():
    for line in M.PAGE.read_text().splitlines():
        if not line.startswith("| `") and not line.startswith("| ``"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 3 and cells[1] and cells[2], "a row without its cause or fix: " + line


# One message the collector must find for each way the code makes one: a message in an error class
# (.format, an f-string, %, a helper returning the exception or the string, a module constant, a
# variable, an attribute), `error:` printed, handed to a function that prints it, a Makefile $(error),
# a shell die or echo, a Dockerfile.
KNOWN = [
    ("core/catalog.py", "manifest not found: <?>"),                                   # ManifestError("...".format())
    ("core/checkpoint.py", "<?> does not match the model built from its config: <?>"),  # a helper returns it
    ("launch/aws.py", "no AWS credentials found: set AWS_PROFILE"),              # a module constant, via fail()
    ("commands/launching.py", "AWS rejected the credentials (<?>): <?>"),      # a variable, " ".join(x.split())
    ("commands/train.py", "<?> resumes with its own hyperparameters"),                    # module.HyperparameterError
    ("launch/endpoint.py", "<?> of <?> photos are over <?> (first: <?>"),         # a helper returning a string
    ("serving/app.py", "model failed to load from <?>: <?>"),                    # an attribute, `or`
    ("serving/app.py", "payload of <?><?> bytes exceeds"),                       # RequestError(status, message)
    ("commands/serve.py", "port <?> is not a TCP port number"),                  # print("error: ...")
    ("commands/tensorboard.py", "<?> has no TensorBoard event files"),                          # SystemExit("error: ...")
    ("training/entry.py", "interrupted; rerun to resume"),                       # fail(root, message)
    ("Makefile", 'make compare needs RUNS="<run> <run> ..."'),                    # $(error ...)
    ("tools/images.sh", "stack <?> needs <?> (Detectron2 <?>, sha256-pinned)"),  # die "... $(...) ..."
    ("tools/setup_venv.sh", "Python >= 3.10 is needed for the local stack (<?> is <?>)"),  # echo "error: ..."
    ("images/base/Dockerfile", "unreadable for non-root users"),                 # a Dockerfile's RUN
    ("images/codebuild/run_buildspec.sh", "<?> is buildspec version <?>, not 0.2"),  # Python inside a script
]


@pytest.mark.parametrize("where,start", KNOWN, ids=[k[1][:30] for k in KNOWN])
def test_the_collector_reads_each_way_a_message_is_made(where, start):
    found = [m.text for m in M.collect() if m.file == where]
    assert any(t.startswith(start) for t in found), "{} not collected from {}: {}".format(start, where, found)


def test_the_collector_leaves_out_values_only_and_internal_messages():
    texts = [m.text for m in M.collect()]
    assert all(m.literal().strip(" :;,.()'\"-") for m in M.collect())
    assert not any(t.startswith("expected an HxWx3 image") for t in texts)  # INTERNAL: a caller's bug
    assert not M.unused_internal(), "INTERNAL names messages the code no longer has: take them out"


def test_a_row_must_quote_the_message_not_gesture_at_it():
    message = M.Message("x.py", 1, "bucket '<?>' is in <?>, but REGION is <?>: SageMaker needs them in one region")
    assert M.matches("error: bucket '<b>' is in <r>, but REGION is <r>: SageMaker needs them in one region", message)
    assert M.matches("error: bucket '<b>' is in <r>, but REGION is <r>: SageMaker needs …", message)
    assert not M.matches("error: bucket '<b>' is in <r>, but REGION is <r>: …", message)  # too little of it
    assert not M.matches("error: bucket …", message)
    assert not M.matches("error: <anything>", message)
    assert not M.matches("error: bucket '<b>' is in <r>, but REGION is <r>: SageMaker needs one region", message)


def _error_line(out: subprocess.CompletedProcess) -> str:
    lines = [l for l in (out.stderr + out.stdout).splitlines() if "error: " in l]
    assert out.returncode != 0 and lines, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return lines[-1][lines[-1].index("error: "):].strip()


# Lines real commands print, each found on the page as printed (no torch, no AWS, no Docker needed).
COMMANDS = [
    [sys.executable, "-m", "shelfdet", "nosuch"],
    [sys.executable, "-m", "shelfdet", "predict", "--image", "shelf.jpg"],
    [sys.executable, "-m", "shelfdet", "data", "--format", "yolo", "--src", "https://example.com/x.zip", "--data-dir", "{tmp}"],
    [sys.executable, "-m", "shelfdet", "upload", "--data-dir", "nowhere"],
    [sys.executable, "-m", "shelfdet", "evaluate", "--predictions", "no-such-folder", "--manifest", "x.manifest"],
    ["bash", "tools/images.sh", "build", "training", "nosuch"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[2:5]) if c[0] == sys.executable else " ".join(c[1:4])
                                                    for c in COMMANDS])
def test_what_a_command_prints_is_found_on_the_page(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "shared"))
    command = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    line = _error_line(out)
    assert M.on_page(line), "{!r} (from {}) is not on docs/troubleshooting.md as printed".format(line, " ".join(command))
