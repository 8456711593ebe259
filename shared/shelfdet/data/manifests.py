"""The common end of every conversion: channel folders, manifests, ``report.json`` and its summary.

A converter (the SKU-110K CSV one, or the one of the other formats) decides which photos go into
which channel, at which size, with which manifest line; :func:`write_channels` claims, writes and
links or resizes them the same way for all, and :func:`write_report` checks the box accounting and
writes the report.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from shelfdet.core import photo_files
from shelfdet.data import CHANNELS, REPORT
from shelfdet.data.written import Written, temp_beside


class Entry(NamedTuple):
    """One photo of a channel: its name there, its source file, its size in the manifest and its own."""

    name: str
    path: str
    size: Tuple[int, int]  # width, height written (resized when it differs from ``own``)
    own: Tuple[int, int]
    boxes: int


def quiet(line: str) -> None:
    """The default report callback: the library prints nothing; a command passes ``print``."""


def natural(name: str) -> Any:
    """Sort key: train_2 before train_10."""
    stem = os.path.splitext(name)[0]
    head, _, num = stem.rpartition("_")
    return (head, int(num)) if num.isdigit() else (stem, -1)


def source_ref(bucket: Optional[str], prefix: str, channel: str, name: str, local_dir: str) -> str:
    if bucket:
        parts = [p for p in (prefix.strip("/"), channel, name) if p]
        return "s3://{}/{}".format(bucket, "/".join(parts))
    return os.path.join(os.path.abspath(local_dir), channel, name)


def link(src: str, rel: str, written: Written) -> None:
    """Links (or copies) ``src`` to ``rel`` in the record's folder; what is there already goes only when
    the record names it (a link to an original is removed as a link: the original is never written)."""
    dst = written.path(rel)
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            return
        written.remove(rel)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def claim(written: Written, per_channel: Dict[str, List[Entry]], photos: bool = True) -> None:
    """Every file this run writes is claimed before the first is written: one that is not the project's,
    in the way, stops the run with nothing changed."""
    for ch in CHANNELS:
        if per_channel[ch]:
            written.claim("annotations/{}.manifest".format(ch))
            if photos:
                for entry in per_channel[ch]:
                    written.claim("{}/{}".format(ch, entry.name))
    written.claim(REPORT)
    written.begin()


def write_channels(data_dir: str, written: Written, per_channel: Dict[str, List[Entry]],
                   line: Callable[[str, Entry], str], photos: bool = True,
                   ) -> Tuple[Dict[str, Dict[str, int]], List[Tuple[str, str, Tuple[int, int]]]]:
    """Each channel's manifest (``line(channel, entry)`` per photo, in natural name order) and, with
    ``photos``, its photos linked; returns the channels' counts and the resize jobs (src, dst, size)
    of the photos whose size in the manifest is not their own."""
    claim(written, per_channel, photos)
    ann_dir = os.path.join(data_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    channels: Dict[str, Dict[str, int]] = {}
    resize_jobs: List[Tuple[str, str, Tuple[int, int]]] = []
    for ch in CHANNELS:
        entries = sorted(per_channel[ch], key=lambda e: natural(e.name))
        if not entries:
            # An earlier run's manifest of a missing channel (it would look current) goes with the record's
            # other leftovers.
            channels[ch] = {"images": 0, "boxes": 0}
            continue
        manifest = os.path.join(ann_dir, ch + ".manifest")
        tmp = temp_beside(manifest)
        with open(tmp, "w") as f:
            for entry in entries:
                f.write(line(ch, entry))
        os.replace(tmp, manifest)
        if photos:
            ch_dir = os.path.join(data_dir, ch)
            os.makedirs(ch_dir, exist_ok=True)
            for entry in entries:
                if entry.size != entry.own:
                    resize_jobs.append((entry.path, os.path.join(ch_dir, entry.name), entry.size))
                else:
                    link(entry.path, "{}/{}".format(ch, entry.name), written)
        channels[ch] = {"images": len(entries), "boxes": sum(e.boxes for e in entries)}
    return channels, resize_jobs


def resize(jobs: List[Tuple[str, str, Tuple[int, int]]], max_side: Optional[int],
           workers: Optional[int]) -> Optional[Dict[str, Any]]:
    """Writes the resized copies; the report's "resized" entry (None without ``max_side``)."""
    if not max_side:
        return None
    sizes = photo_files.resize_all(jobs, workers)
    return {"max_side": max_side, "images": len(jobs),
            "bytes_before": sum(os.path.getsize(j[0]) for j in jobs), "bytes_after": sum(sizes)}


def write_report(report: Dict[str, Any], data_dir: str, extra: Optional[Dict[str, Any]],
                 log: Callable[[str], None] = quiet) -> Dict[str, Any]:
    """DATA_DIR/report.json, after the box accounting adds up; the summary lines; the report."""
    report.update(extra or {})
    if sum(report["boxes"]["dropped_by_reason"].values()) != report["boxes"]["dropped"]:
        raise AssertionError("box accounting is off: {}".format(report["boxes"]))  # a bug here, not bad data
    path = os.path.join(data_dir, REPORT)
    tmp = temp_beside(path)
    with open(tmp, "w") as f:
        f.write(_dump(report))
    os.replace(tmp, path)
    summarize(report, log)
    return report


def _dump(report: Dict[str, Any]) -> str:
    """Readable, and fast with 100k problems: json.dump with indent uses the pure-Python encoder."""
    head = dict(report, problems=[])
    text = json.dumps(head, indent=1)
    body = ",\n  ".join(map(json.dumps, report["problems"]))
    marker = '"problems": []'
    return text.replace(marker, '"problems": [\n  ' + body + "\n ]" if body else marker, 1) + "\n"


def summarize(report: Dict[str, Any], log: Callable[[str], None] = quiet, examples: int = 5) -> None:
    """The lines ``make data`` shows: per channel, the box accounting, resized and corrupted photos, and the
    first few problems."""
    ch = report["channels"]
    b = report["boxes"]
    log("data: " + ", ".join("{} {} images / {} boxes".format(c, v["images"], v["boxes"]) for c, v in ch.items()))
    log("boxes: {} rows, {} kept ({} clipped to the image), {} dropped{}".format(
        b["rows"], b["kept"], b["clipped"], b["dropped"],
        "" if not b["dropped"] else " (" + ", ".join("{} {}".format(v, k) for k, v in b["dropped_by_reason"].items()) + ")"))
    r = report.get("resized")
    if r:
        log("resized: {} images to a longer side of at most {} px ({:.1f} MB -> {:.1f} MB)".format(
            r["images"], r["max_side"], r["bytes_before"] / 1e6, r["bytes_after"] / 1e6))
    for c in report["images"]["corrupted"]:
        log("corrupted image dropped: {} ({})".format(c["image"], c["reason"]))
    probs = [p for p in report["problems"] if p["kind"] != "clipped"]
    for p in probs[:examples]:
        log("  {}:{}: {}: {}{}".format(p["file"], p["line"], p["field"], p["message"],
                                      " ({} rows)".format(p["rows"]) if p.get("rows", 1) > 1 else ""))
    if len(probs) > examples:
        log("  ... {} more problems in {}".format(len(probs) - examples, os.path.join(report["data_dir"], REPORT)))
