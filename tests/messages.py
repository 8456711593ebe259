"""The one-line errors the product prints, collected from the code, and docs/troubleshooting.md's
rows that document them.

Collected (by reading the code, not running it) from shared/shelfdet:
- the messages of the product's own error classes, and of the builtin ones it raises for bad input;
- every string that starts with ``error: `` (printed, or given to SystemExit);
- the messages handed to a function that prints ``error: `` + its argument (the launchers' ``fail``);
from the Makefile, its ``$(error ...)`` lines; from tools/*.sh, images/*/*.sh and the Dockerfiles
(make build, make setup, make test), what they ``die`` with or quote as ``"error: ..."``.

A message is a template: ``<?>`` stands where the code puts a value in. A page row documents a
template when the row's code span, with ``<name>`` for any value and ``…`` for text left out,
matches the whole template.

``python tests/messages.py`` prints the rows the page lacks, ready to fill in, and the page's rows
that no longer match any message.
"""
from __future__ import annotations

import ast
import functools
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shared" / "shelfdet"
PAGE = ROOT / "docs" / "troubleshooting.md"
HOLE = "<?>"
PLACEHOLDER = r"<[^<>\s][^<>]*>"
PREFIX = "error: "
WARNINGS = "\n## Warnings\n"

# The product's own errors (each one reaches the user as an `error:` line, an HTTP error body, or
# a job's failure reason), and the builtin ones that it raises for bad input.
CLASSES = {"ArtefactError", "BackendError", "CheckpointMismatch", "CompiledOpsMissing", "ConfigError", "ContractError",
           "DataError", "FormatNotAccepted", "HyperparameterError", "ImageDecodeError", "ImageError", "LaunchError",
           "LimitError", "ManifestError", "PredictError", "RequestError", "ResumeError", "UnknownConfigKey", "UnsafeName",
           "ValueError", "FileNotFoundError", "ImportError", "SystemExit"}
# Raised for a bug in the caller, never for what a user gave: (file, the message's first words).
INTERNAL = {
    ("core/inference.py", "expected an HxWx3 image"),          # Detector.predict's own callers decode first
    ("core/inference.py", "tiles are cut from the photo"),     # the tiled path decodes at full size itself
    ("core/exported.py", "expected an HxWx3 image"),           # as core/inference.py's, for exported models
    ("core/exported.py", "tiles are cut from the photo"),
    ("core/modeling.py", "expected <?> feature levels"),       # the FPN gives one map per level
    ("core/modeling.py", "<?> needs MODEL.RETINANET.NORM"),    # the recipe sets the norm with the head
    ("core/modeling.py", "every pyramid level needs"),         # the anchor generator is built per level
    ("data/sku110k.py", "max_side needs the images"),     # sizes_from_csv is called without max_side
    ("data/synthetic.py", "unknown preset"),              # the CLI's choices= refuses it first
}


@dataclass(frozen=True)
class Message:
    file: str
    line: int
    text: str  # the template, without the `error: ` prefix, whitespace runs as one space

    def literal(self) -> str:
        """The fixed words: without the values, and without the code's own <placeholders> (REGION=<region>)."""
        return re.sub(PLACEHOLDER, "", self.text)


def _format_template(fmt: str) -> str:
    out = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        out.append(literal)
        if field is not None:
            out.append(HOLE)
    return "".join(out)


class _Module:
    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text())
        self.functions = {n.name: n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.constants: Dict[str, ast.expr] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.constants[node.targets[0].id] = node.value
        self.parents: Dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(self.tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent

    def enclosing_function(self, node: ast.AST) -> Optional[ast.AST]:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    def render(self, expr: ast.expr, scope: Optional[ast.AST], depth: int = 0) -> List[str]:
        """Every template the expression can produce (one per assignment or return it may come from)."""
        if depth > 4:
            return [HOLE]
        if isinstance(expr, ast.Constant):
            return [expr.value] if isinstance(expr.value, str) else [HOLE]
        if isinstance(expr, ast.JoinedStr):
            return ["".join(v.value if isinstance(v, ast.Constant) else HOLE for v in expr.values)]
        if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "format"
                and isinstance(expr.func.value, ast.Constant) and isinstance(expr.func.value.value, str)):
            return [_format_template(expr.func.value.value)]
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return [a + b for a in self.render(expr.left, scope, depth + 1)
                    for b in self.render(expr.right, scope, depth + 1)]
        if (isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod) and isinstance(expr.left, ast.Constant)
                and isinstance(expr.left.value, str)):
            return [re.sub(r"%[-+ #0-9.]*[sdrfgx]", HOLE, expr.left.value)]
        if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "join"
                and len(expr.args) == 1 and isinstance(expr.args[0], ast.Call)
                and isinstance(expr.args[0].func, ast.Attribute) and expr.args[0].func.attr == "split"):
            return self.render(expr.args[0].func.value, scope, depth + 1)  # " ".join(text.split())
        if isinstance(expr, ast.BoolOp):  # holder.error or "model is loading"
            return [t for v in expr.values for t in self.render(v, scope, depth + 1)]
        if isinstance(expr, ast.IfExp):
            return self.render(expr.body, scope, depth + 1) + self.render(expr.orelse, scope, depth + 1)
        if isinstance(expr, ast.Name):
            values = [n.value for n in ast.walk(scope) if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)] if scope else []
            if not values and expr.id in self.constants:
                values = [self.constants[expr.id]]
            return [t for v in values for t in self.render(v, scope, depth + 1)] or [HOLE]
        if isinstance(expr, ast.Attribute):  # holder.error: what the module assigns to .error
            values = [n.value for n in ast.walk(self.tree) if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Attribute) and t.attr == expr.attr for t in n.targets)]
            return [t for v in values for t in self.render(v, scope, depth + 1)] or [HOLE]
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in self.functions:
            helper = self.functions[expr.func.id]
            returns = [n.value for n in ast.walk(helper) if isinstance(n, ast.Return) and n.value is not None]
            return [t for r in returns for t in self.render(r, helper, depth + 1)] or [HOLE]
        return [HOLE]

    def sinks(self) -> Dict[str, int]:
        """Functions that print `error: ` + one of their parameters: name -> that parameter's index."""
        out = {}
        for name, fn in self.functions.items():
            params = [a.arg for a in fn.args.args]
            for node in ast.walk(fn):
                if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant)
                        and node.left.value == PREFIX):
                    used = [n.id for n in ast.walk(node.right) if isinstance(n, ast.Name) and n.id in params]
                    if used:
                        out[name] = params.index(used[0])
        return out


def _normal(text: str) -> Optional[str]:
    text = text.split("\n")[0]
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    text = " ".join(text.split())
    if not text.replace(HOLE, "").strip(" :;,.()'\"-"):
        return None  # all values: the message was made elsewhere (and is collected there)
    return text


def _templates(module: _Module) -> Iterator[tuple]:
    sinks = module.sinks()
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        scope = module.enclosing_function(node)
        # A plain call (print, fail, SystemExit, DataError), or an error class named through its module.
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name is not None and (isinstance(node.func, ast.Name) or name in CLASSES):
            if name in CLASSES and node.args:
                # RequestError(status, message)
                arg = node.args[1] if name == "RequestError" and len(node.args) > 1 else node.args[0]
                for t in module.render(arg, scope):
                    yield node.lineno, t
            elif name in sinks and len(node.args) > sinks[name]:
                for t in module.render(node.args[sinks[name]], scope):
                    yield node.lineno, t
            elif node.args:  # print("error: ..."), SystemExit("error: ..."), say("error: ...")
                for t in module.render(node.args[0], scope):
                    if t.startswith(PREFIX):
                        yield node.lineno, t


def _shell_string(line: str, start: int) -> str:
    """The double-quoted shell string that starts at ``start``, up to its closing quote ($(...) may quote inside)."""
    depth, k = 0, start
    while k < len(line):
        if line[k] == "\\":
            k += 2
            continue
        if line.startswith("$(", k):
            depth, k = depth + 1, k + 2
            continue
        if line[k] == ")" and depth:
            depth -= 1
        elif line[k] == '"' and not depth:
            break
        k += 1
    return line[start:k]


def _shell_template(said: str) -> str:
    """A shell string's words with each expansion ($x, ${x...}, $(...)) as a value."""
    out, k = [], 0
    while k < len(said):
        if said.startswith("$(", k):
            depth, k = 1, k + 2
            while k < len(said) and depth:
                depth += {"(": 1, ")": -1}.get(said[k], 0)
                k += 1
            out.append(HOLE)
        elif said.startswith("${", k):
            k = said.index("}", k) + 1
            out.append(HOLE)
        elif said[k] == "$" and k + 1 < len(said) and (said[k + 1].isalnum() or said[k + 1] == "_"):
            k = re.match(r"\$(\w+)", said[k:]).end() + k
            out.append(HOLE)
        elif said[k] == "\\" and k + 1 < len(said):
            out.append(said[k + 1])
            k += 2
        else:
            out.append(said[k])
            k += 1
    return "".join(out)


@functools.lru_cache(maxsize=None)
def _python_messages() -> List[Message]:
    found: Dict[tuple, Message] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, raw in _templates(_Module(path)):
            text = _normal(raw)
            if text is not None:
                found.setdefault((rel, text), Message(rel, line, text))
    return list(found.values())


def _internal(message: Message) -> bool:
    return any(message.file == f and message.text.startswith(start) for f, start in INTERNAL)


def unused_internal() -> List[tuple]:
    """INTERNAL entries that no message in the code starts with any more."""
    return [(f, start) for f, start in sorted(INTERNAL)
            if not any(m.file == f and m.text.startswith(start) for m in _python_messages())]


@functools.lru_cache(maxsize=None)
def collect() -> List[Message]:
    found: Dict[tuple, Message] = {(m.file, m.text): m for m in _python_messages() if not _internal(m)}
    scripts = sorted((ROOT / "tools").glob("*.sh")) + sorted((ROOT / "images").glob("*/*.sh")) + sorted(
        (ROOT / "images").glob("*/Dockerfile"))
    for path in scripts:
        rel = path.relative_to(ROOT).as_posix()
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r'\bdie\s+"|"(?=error: )', raw):
                said = _shell_string(raw, m.end())
                text = _normal(_format_template(_shell_template(said)) if "{}" in said else _shell_template(said))
                if text and not text.startswith("usage:"):
                    found.setdefault((rel, text), Message(rel, n, text))
    for n, raw in enumerate((ROOT / "Makefile").read_text().splitlines(), 1):
        for m in re.finditer(r"\$\(error ([^)]*(?:\([^)]*\)[^)]*)*)\)", raw):
            text = _normal(re.sub(r"\$\([^)]*\)", HOLE, m.group(1)))
            if text:
                found.setdefault(("Makefile", text), Message("Makefile", n, text))
    return sorted(found.values(), key=lambda m: (m.file, m.line))


def _code_spans(cell: str) -> List[str]:
    return [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", cell)]


def documented(page: Optional[str] = None) -> List[str]:
    """The code spans in the first column of the page's tables (the messages it documents), up to its Warnings."""
    page = PAGE.read_text() if page is None else page
    page = page.split(WARNINGS, 1)[0]  # what follows is not errors, and not collected
    out = []
    for line in page.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        if cells and cells[0].strip() != "message":
            out += [s.replace("\\|", "|") for s in _code_spans(cells[0])[:1]]  # the message; later spans are remarks
    return out


def pattern(span: str) -> "re.Pattern[str]":
    """A page span as a pattern over templates: `<name>` is any text (a value), `…` any text left out."""
    span = " ".join(span.split())
    if span.startswith(PREFIX):
        span = span[len(PREFIX):]
    parts = re.split("({}|…)".format(PLACEHOLDER), span)
    return re.compile("".join(".+?" if p.startswith("<") and p.endswith(">") else ".*?" if p == "…" else re.escape(p)
                              for p in parts if p), re.S)


def literal_length(span: str) -> int:
    span = span[len(PREFIX):] if span.startswith(PREFIX) else span
    return len(re.sub(PLACEHOLDER + r"|…|\s", "", span))


def matches(span: str, message: Message) -> bool:
    # A row must quote the message, not gesture at it: most of its fixed words, or 40 characters of them.
    enough = min(40, int(0.6 * len(message.literal().replace(" ", ""))))
    return literal_length(span) >= enough and pattern(span).fullmatch(message.text) is not None


def on_page(line: str, spans: Optional[List[str]] = None) -> bool:
    """Whether a line as printed (or an HTTP error as sent) reads as one of the page's rows."""
    line = line[len(PREFIX):] if line.startswith(PREFIX) else line
    return any(pattern(span).fullmatch(line) for span in (documented() if spans is None else spans))


def undocumented(messages: List[Message], spans: List[str]) -> List[Message]:
    return [m for m in messages if not any(matches(s, m) for s in spans)]


def stale(messages: List[Message], spans: List[str]) -> List[str]:
    return [s for s in spans if not any(matches(s, m) for m in messages)]


def row(message: Message) -> str:
    shown = message.text.replace(HOLE, "<…>").replace("|", "\\|")
    tick = "``" if "`" in shown else "`"
    return "| {t} {}{} {t} | | |  <!-- {}:{} -->".format(PREFIX, shown, message.file, message.line, t=tick)


def main() -> int:
    messages, spans = collect(), documented()
    missing, old = undocumented(messages, spans), stale(messages, spans)
    for m in missing:
        print(row(m))
    for s in old:
        print("stale: " + s)
    print("{} messages, {} undocumented, {} stale rows".format(len(messages), len(missing), len(old)), file=sys.stderr)
    return 1 if missing or old else 0


if __name__ == "__main__":
    sys.exit(main())
