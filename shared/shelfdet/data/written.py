"""The record of what the project wrote into a folder (``written.json``): the only files it may replace or remove.

``make data`` may be pointed at a folder that holds other things (a labelling tool's export, a photo,
notes): it replaces or removes a file there only when the record names it, and refuses, before it
writes anything, when a file it would write is already there and not its own. ``make clean`` removes
what the record names and nothing else. Downloads under ``runs/`` (TensorBoard event files, batch
transform outputs) keep the same record.

Entries are paths relative to the folder; one ending in ``/`` is a folder the project created whole
(a generated or extracted source tree), everything below it being its own.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional, Set

from shelfdet.core import safepath
from shelfdet.core.atomic import temp_beside  # noqa: F401 - also the data room's name for it
from shelfdet.data import CHANNELS, REPORT, DataError

RECORD = "written.json"
FORMAT = "shelfdet-written/1"
# Folders under DATA_DIR/source that make data creates whole: caches kept from one build to the next.
SOURCE_TREES = ("source/SKU110K_fixed/", "source/download/", "source/extracted/", "source/s3/")
def _legacy(folder: str) -> Optional[Set[str]]:
    """What a data folder built before the record existed holds of the project's own: report.json, the
    manifests, the channel files they name, and the source trees. None when report.json is not ours."""
    try:
        with open(os.path.join(folder, REPORT)) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not {"boxes", "channels", "problems"} <= set(report):
        return None
    entries = {REPORT}
    for channel in CHANNELS:
        manifest = os.path.join("annotations", channel + ".manifest")
        try:
            with open(os.path.join(folder, manifest)) as f:
                lines = f.readlines()
        except OSError:
            continue
        entries.add(manifest)
        for line in lines:
            try:
                ref = json.loads(line)["source-ref"]
            except (ValueError, KeyError, TypeError):
                continue
            entries.add(channel + "/" + str(ref).rstrip("/").rsplit("/", 1)[-1])
    entries.update(t for t in SOURCE_TREES if os.path.isdir(os.path.join(folder, t)))
    return entries


class Written:
    """The record of ``folder``: :meth:`claim` what a run will write, :meth:`begin` before writing it,
    :meth:`finish` after (removes what earlier runs wrote and this one did not, keeps ``keep``)."""

    def __init__(self, folder: str, legacy: bool = True):
        self.folder = folder
        self.record = os.path.join(folder, RECORD)
        self.new = set()  # type: Set[str]
        self.exists = True
        try:
            with open(self.record) as f:
                doc = json.load(f)
            self.old = set(doc["files"])  # type: Set[str]
        except OSError:
            found = _legacy(folder) if legacy else None
            self.exists = found is not None
            self.old = found or set()
        except (ValueError, KeyError, TypeError):
            raise DataError("{}: not a record of shelfdet (JSON with a files list); move it away".format(self.record)) from None

    @staticmethod
    def _rel(rel: str) -> str:
        return rel.replace(os.sep, "/")

    def path(self, rel: str) -> str:
        """The file ``rel`` of the folder, never one outside it."""
        try:
            return safepath.inside(self.folder, rel.rstrip("/"), subpath=True)
        except safepath.UnsafeName as err:
            raise DataError("{}: {}".format(self.folder, err)) from None

    def owns(self, rel: str) -> bool:
        rel = self._rel(rel)
        entries = self.old | self.new
        return rel in entries or any(e.endswith("/") and rel.startswith(e) for e in entries) \
            or rel + "/" in entries

    def claim(self, rel: str) -> str:
        """``rel`` will be written by this run: its path, or DataError when a file not ours is there."""
        return self._take(self._rel(rel))

    def claim_tree(self, rel: str) -> str:
        """The folder ``rel`` will be created whole by this run: refused when it holds files not ours."""
        return self._take(self._rel(rel).rstrip("/") + "/")

    def _take(self, rel: str) -> str:
        path = self.path(rel)
        if os.path.lexists(path) and not self.owns(rel):
            raise DataError("{}: already there and not written by shelfdet ({} does not name it); move it away "
                            "or pick another folder".format(path, self.record))
        self.new.add(rel)
        return path

    def remove(self, rel: str) -> None:
        """Removes the file or folder ``rel``, only when the record names it (else a bug: refused loudly)."""
        if not self.owns(rel):
            raise DataError("{}: not written by shelfdet ({} does not name it); left in place".format(self.path(rel), self.record))
        path = self.path(rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)

    def save(self, entries: Iterable[str]) -> None:
        os.makedirs(self.folder, exist_ok=True)
        tmp = temp_beside(self.record)
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "files": sorted(entries)}, f, indent=0)
            f.write("\n")
        os.replace(tmp, self.record)

    def begin(self) -> None:
        """Saves old and claimed entries together: a run cut short still knows every file it may have written."""
        self.save(self.old | self.new)
        self.old |= self.new

    def finish(self, keep: Iterable[str] = SOURCE_TREES) -> List[str]:
        """Removes what earlier runs wrote and this one did not (except below ``keep``); returns those entries."""
        keep = tuple(keep)
        removed = []
        for rel in sorted(self.old - self.new):
            if rel.startswith(keep):
                if os.path.lexists(self.path(rel)):
                    self.new.add(rel)
                continue
            self.remove(rel)
            removed.append(rel)
        self.save(self.new)
        self.old = set(self.new)
        return removed

    def clean(self) -> Dict[str, Any]:
        """``make clean``: removes every entry, the record, and the folders left empty by that (the folder
        too when nothing else is in it); returns {"removed": top-level names with counts, "kept": [...]}."""
        counts = {}  # type: Dict[str, int]
        parents = set()
        for rel in sorted(self.old):
            path = self.path(rel)
            if not os.path.lexists(path):
                continue
            top = rel.split("/", 1)[0] + ("/" if "/" in rel.rstrip("/") else "")
            counts[top] = counts.get(top, 0) + (sum(len(f) for _, _, f in os.walk(path)) if rel.endswith("/") else 1)
            self.remove(rel)
            parent = os.path.dirname(rel.rstrip("/"))
            while parent:
                parents.add(parent)
                parent = os.path.dirname(parent)
        if os.path.lexists(self.record):
            os.remove(self.record)
        for rel in sorted(parents, key=lambda p: -p.count("/")):
            try:
                os.rmdir(os.path.join(self.folder, rel))
            except OSError:  # holds something not ours
                pass
        kept = [] if not os.path.isdir(self.folder) else sorted(os.listdir(self.folder))
        if not kept:
            os.rmdir(self.folder)
        return {"removed": counts, "kept": kept}
