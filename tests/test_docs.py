"""The README and docs/ say what is true: every `make ...` line names a target the Makefile has with
variables it knows, every `python -m shelfdet ...` a command the CLI has, every relative link and
image resolves (anchors included), and the generated tables match their sources."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# Variables the product reads from the environment rather than the Makefile.
ENVIRONMENT = {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE",
               "SHELFDET_ZOO_MIRROR", "CI", "SHELFDET_TEST_IN", "SHELFDET_MAX_QUEUE", "SHELFDET_PIXELS_IN_FLIGHT",
               "SHELFDET_INFER", "SHELFDET_TWINS", "OMP_NUM_THREADS"}


def _fenced(page: Path):
    """(line number, text) of each command inside ``` fences, continuation lines joined."""
    inside, held = False, None
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if held:
            line = held[1] + " " + line.strip()
            n = held[0]
        if line.rstrip().endswith("\\"):
            held = (n, line.rstrip()[:-1])
            continue
        held = None
        yield n, line


def _commands(prefix: str):
    out = []
    for page in PAGES:
        for n, line in _fenced(page):
            for part in re.split(r"&&|;", line.split("  #")[0]):
                part = part.strip()
                if part.startswith(prefix):
                    out.append(("{}:{}".format(page.relative_to(ROOT), n), part))
    return out


def _makefile():
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.M))
    variables = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[?:]?=", text, re.M))
    return targets, variables


MAKE_LINES = _commands("make ")


def test_the_docs_show_make_commands():
    assert len(MAKE_LINES) > 40 and any(w == "README.md:" for w, _ in [(x.split(":")[0] + ":", 0) for x, _ in MAKE_LINES])


@pytest.mark.parametrize("where, line", MAKE_LINES, ids=[w for w, _ in MAKE_LINES])
def test_each_documented_make_line_is_a_target_with_known_variables(where, line):
    targets, variables = _makefile()
    words = [w.strip("[]") for w in re.findall(r"(?:[^\s'\"]|'[^']*'|\"[^\"]*\")+", line)[1:]]
    named = [w for w in words if w and "=" not in w and not w.startswith(("-", "|", "<", "…"))]
    assert named and named[0] in targets, "{}: `{}`: no target {!r} in the Makefile".format(where, line, named[:1])
    for word in words:
        if "=" in word and re.match(r"^[A-Z][A-Z0-9_]*=", word):
            var = word.split("=", 1)[0]
            assert var in variables or var in ENVIRONMENT, "{}: `{}`: the Makefile has no variable {}".format(where, line, var)


def test_make_accepts_every_documented_line_in_a_dry_run():
    """`make -n` of each line without placeholders: Make itself parses targets and variables."""
    for where, line in MAKE_LINES:
        if re.search(r"[<>\[\]…|]", line):
            continue  # a template the reader fills in
        proc = subprocess.run(["make", "-n", "--no-print-directory"] + _split(line)[1:], cwd=str(ROOT),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, "{}: `{}`:\n{}".format(where, line, proc.stderr[-1000:])


def _split(line: str):
    import shlex

    return shlex.split(line)


def test_each_documented_shelfdet_command_exists():
    from shelfdet.commands import cli

    lines = _commands("python -m shelfdet ") + _commands(".venv/bin/python -m shelfdet ")
    for where, line in lines:
        command = line.split("-m shelfdet ", 1)[1].split()[0]
        assert command in cli.COMMANDS, "{}: `{}`: no command {}".format(where, line, command)


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path):
    inside, out = False, set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and re.match(r"^#{1,6} ", line):
            out.add(_slug(line))
    return out


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append("{}: {} (no such file)".format(page.relative_to(ROOT), target))
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append("{}: {} (no such heading)".format(page.relative_to(ROOT), target))
    assert not broken, "\n".join(broken)


def test_the_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert "(docs/{})".format(page.name) in readme, "README does not link docs/{}".format(page.name)
    assert "make push-training REGION=us-east-2" in readme  # the card's command, in the SageMaker path


def test_each_page_starts_with_its_commands():
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = [line for line in page.read_text().splitlines() if line.strip()]
        assert lines[0].startswith("# ") and lines[1] == "```bash" or page.name in ("targets.md", "layout.md"), page.name


def test_the_benchmark_table_is_what_the_results_say():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run
    finally:
        sys.path.pop(0)
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    from shelfdet.core import pages

    assert pages.block(page, "bench") == run.table(), "docs/benchmarks.md's table is stale: python bench/run.py --table"


# ---- every Make name in the docs exists; docs/targets.md is the Makefile's ---------------------------

sys.path.insert(0, str(ROOT / "tools"))
import targets_doc  # noqa: E402

# Read from the environment by the product or by the tools `make` runs (setup_venv.sh: PYTHON; the image
# builds: DOCKER), or a placeholder (KEY=VALUE): not Make variables.
ENVIRONMENT_PREFIXES = ("SHELFDET_", "SAGEMAKER_", "SM_", "AWS_", "MLFLOW_")
TOOL_ENVIRONMENT = {"PYTHON", "DOCKER", "KEY"}


def _make_names():
    """The Makefile's targets, and its variables: defined, read as $(NAME), or listed by `make help`."""
    text = (ROOT / "Makefile").read_text()
    targets, defined = _makefile()
    read = set(targets_doc.REF.findall(text)) | {name for name, _ in targets_doc.variables(text)}
    return targets, defined | read


def _code_spans(text: str):
    """Each line of every fenced block, and every inline code span."""
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    spans = [line for block in fence.findall(text) for line in block.splitlines()]
    return spans + re.findall(r"``? ?([^`\n]+?) ?``?", fence.sub("", text))


def unknown_make_names(text: str):
    """`make <target>` and `NAME=` in the code of a page that the Makefile does not have."""
    targets, variables = _make_names()
    found = []
    for span in _code_spans(text):
        for m in re.finditer(r"(?:^|[\s(;&|`])make ((?:[A-Z][A-Z0-9_]*=\S*\s+)*)([a-z][a-z0-9-]*)([*<]?)", span):
            name, template = m.group(2), m.group(3)
            known = any(t.startswith(name) for t in targets) if template else name in targets
            if not known:
                found.append("make " + name + template)
        for m in re.finditer(r"(?<![\w$.-])([A-Z][A-Z0-9_]*)=", span):
            name = m.group(1)
            if not (name in variables or name in ENVIRONMENT or name in TOOL_ENVIRONMENT
                    or name.startswith(ENVIRONMENT_PREFIXES)):
                found.append(name + "=")
    return sorted(set(found))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_make_name_in_the_docs_exists(page):
    unknown = unknown_make_names(page.read_text())
    assert not unknown, "{} names what the Makefile does not have: {}".format(page.relative_to(ROOT), unknown)


def test_a_made_up_make_name_is_caught():
    assert unknown_make_names("Run `make trian` or `make train ALOG=retinanet`.\n```bash\nmake lint\n```\n") == \
        ["ALOG=", "make lint", "make trian"]


def test_make_help_lists_every_target_and_variable():
    text = (ROOT / "Makefile").read_text()
    helped = {name for name, _ in targets_doc.variables(text)}
    settable = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*\?=", text, re.M))
    assert not settable - helped, "make help does not list {}".format(sorted(settable - helped))
    phony = set(" ".join(re.findall(r"^\.PHONY:((?:[^\n]*\\\n)*[^\n]*)", text, re.M)).replace("\\", " ").split())
    described = {t for t, _ in targets_doc.targets(text)}
    assert not phony - described, "targets without a ## line for make help: {}".format(sorted(phony - described))
    for name in ("clean", "RECIPE", "OBJECTIVE", "INSTANCE_COUNT", "PORT", "PYTEST_ARGS", "ALGO"):
        assert "`{}`".format(name) in targets_doc.block(text) or "`make {}`".format(name) in targets_doc.block(text)
    assert "faster_rcnn \\| retinanet \\| cascade_rcnn" in targets_doc.block(text)


def test_the_targets_page_is_what_the_makefile_says():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "targets_doc.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + "(make targets-doc writes it)"


def test_no_page_or_file_cites_a_document_outside_the_repository():
    cite = "SPEC" + " §"
    found = []
    for folder in ("docs", "shared", "tests", "bench", "tools", "images"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".md", ".py", ".sh", ".txt", ".yml", "") and ".build" not in path.parts:
                try:
                    text = path.read_text()
                except (UnicodeDecodeError, OSError):
                    continue
                found += ["{}:{}".format(path.relative_to(ROOT), n) for n, line in enumerate(text.splitlines(), 1)
                          if cite in line]
    for name in ("README.md", "Makefile"):
        found += [name for line in (ROOT / name).read_text().splitlines() if cite in line]
    assert not found, "cites a document the repository does not have (state the fact instead): {}".format(found)
