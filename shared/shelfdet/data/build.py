"""Builds DATA_DIR from SRC, or from a generated synthetic SKU-110K (``python -m shelfdet data``).

Cheap to call again: when DATA_DIR/report.json was made from the same source
and options, it says so and stops (``make train`` calls it every time).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from shelfdet.data import DEFAULT_LABEL, REPORT, DataError, fetch, formats, sku110k, synthetic
from shelfdet.data.manifests import quiet
from shelfdet.data.written import Written

# Labels in SRC: the SKU-110K CSVs (the default), or one of the formats' readers (BUILDERS below).
SOURCE_FORMATS = ("sku110k",) + formats.FORMATS


class Request(NamedTuple):
    """What to build: ``make data``'s options, typed."""

    data_dir: str
    src: Optional[str] = None  # None: the synthetic set
    format: str = "sku110k"
    bucket: Optional[str] = None
    prefix: str = "detectron2/data"
    label: str = DEFAULT_LABEL
    max_side: Optional[int] = None
    preset: str = "default"
    photos: Optional[Dict[str, Optional[int]]] = None  # synthetic: photos per split given (None: the preset's)
    photo_size: Optional[Tuple[int, int]] = None  # synthetic: width, height given
    seed: int = synthetic.DEFAULT_SEED
    workers: Optional[int] = None
    force: bool = False


def source_stamp(root: str, fmt: str = "sku110k") -> List[List[Any]]:
    """What the source's labels are now (size, mtime per label file): a rebuild is due when it changes."""
    if fmt != "sku110k":
        return formats.stamp(root, fmt)
    return sku110k.stamp(root)


def synthetic_set(request: Request) -> Tuple[Dict[str, int], Tuple[int, int]]:
    """Split sizes and photo size: the ones given, else the preset's."""
    preset = synthetic.PRESETS[request.preset]
    given = request.photos or {}
    return ({k: preset["images"][k] if given.get(k) is None else given[k] for k in ("train", "val", "test")},
            tuple(request.photo_size or preset["size"]))  # type: ignore[return-value]


def options(request: Request) -> Dict[str, Any]:
    """The options report.json records: the same ones later mean the data is up to date."""
    opts: Dict[str, Any] = {"bucket": request.bucket, "prefix": request.prefix if request.bucket else None,
                            "label": request.label}
    if request.max_side:  # only when given: data folders built before the option stay current
        opts["max_side"] = request.max_side
    if request.format != "sku110k":  # only then: data folders built before formats stay current
        opts["format"] = request.format
    if request.src:
        opts["src"] = request.src if fetch.is_url(request.src) else os.path.abspath(request.src)
    else:
        opts["src"] = "synthetic"
        counts, size = synthetic_set(request)
        opts["synthetic"] = {"version": synthetic.VERSION, "seed": request.seed, "image_size": list(size),
                             "images": counts}
        if request.preset != "default":  # only then: data folders built before presets stay current
            opts["synthetic"]["preset"] = request.preset
            opts["synthetic"]["preset_version"] = synthetic.PRESETS[request.preset]["version"]
    return opts


def up_to_date(data_dir: str, opts: Dict[str, Any]) -> bool:
    try:
        with open(os.path.join(data_dir, REPORT)) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    if report.get("options") != opts:
        return False
    if opts["src"] != "synthetic" and not fetch.is_url(opts["src"]):
        # A local source edited in place must be converted again.
        root = report.get("source")
        try:
            if not root or not os.path.isdir(root) or \
                    source_stamp(root, opts.get("format", "sku110k")) != report.get("source_stamp"):
                return False
        except DataError:
            return False
    return all(os.path.isfile(os.path.join(data_dir, "annotations", c + ".manifest"))
               for c, v in report.get("channels", {}).items() if v.get("images"))


def check_apart(data_dir: str, src: Optional[str], fmt: str = "sku110k") -> None:
    """DataError when DATA_DIR is SRC, lies inside it or holds it: make data would write among the source's
    files. For a SKU-110K SRC the folder compared is the SKU110K_fixed one read (SRC may be its parent)."""
    if not src or fetch.is_url(src):
        return
    root = (fetch.find_root(src) or src) if fmt == "sku110k" and os.path.isdir(src) else src
    data, source = os.path.realpath(data_dir), os.path.realpath(root)
    if data == source:
        relation = "is"
    elif data.startswith(source.rstrip(os.sep) + os.sep):
        relation = "lies inside"
    elif source.startswith(data.rstrip(os.sep) + os.sep):
        relation = "holds"
    else:
        return
    raise DataError("DATA_DIR={} {} SRC={}: make data writes its channels, manifests and report there; pick a "
                    "DATA_DIR apart from SRC".format(data_dir, relation, src))


def _labelled(request: Request, opts: Dict[str, Any], written: Written, say: Callable[[str], None],
              progress: Callable[[str], None]) -> Dict[str, Any]:
    """SRC in one of the formats' layouts (coco, voc, yolo, gt): a local folder."""
    if not request.src:
        raise DataError("FORMAT={} needs SRC=<folder> with the labels and images".format(request.format))
    if fetch.is_url(request.src):
        raise DataError("FORMAT={} reads a local folder; SRC={} is a URL (download and unpack it first)".format(
            request.format, request.src))
    return formats.convert(request.src, request.format, request.data_dir, bucket=request.bucket,
                           prefix=request.prefix, label=request.label, workers=request.workers,
                           extra={"options": opts}, log=say, max_side=request.max_side, written=written)


def _generated(request: Request, work: str, written: Written, say: Callable[[str], None]) -> str:
    """The synthetic set, generated from scratch into ``work``: its SKU110K_fixed folder."""
    counts, size = synthetic_set(request)
    for n in counts.values():
        if n < 1:
            raise DataError("--train/--val/--test-images must be at least 1, got {}".format(n))
    # Regenerate from scratch: a smaller set must not inherit the old set's extra photos.
    tree = "source/{}/".format(synthetic.ROOT_NAME)
    written.claim_tree(tree)
    written.begin()
    written.remove(tree)
    gen = synthetic.generate(work, counts, size, request.seed, preset=request.preset)
    say("data: generated synthetic SKU-110K ({}{} images, {}x{}, seed {}) in {}".format(
        "" if request.preset == "default" else "preset {}, ".format(request.preset),
        len(gen.boxes), size[0], size[1], request.seed, gen.root))
    return gen.root


def _sku110k(request: Request, opts: Dict[str, Any], written: Written, say: Callable[[str], None],
             progress: Callable[[str], None]) -> Dict[str, Any]:
    """SRC as SKU-110K ships it (a folder, the .tar.gz or its URL), or the synthetic set generated."""
    work = os.path.join(request.data_dir, "source")
    if request.src:
        # A download and an extraction each get a folder of their own under source/.
        if fetch.is_url(request.src):
            written.claim_tree("source/download")
        if fetch.is_url(request.src) or os.path.isfile(request.src):
            written.claim_tree("source/extracted")
        written.begin()
        root = fetch.resolve(request.src, work, progress)
    else:
        root = _generated(request, work, written, say)
    extra = {"options": opts, "source_stamp": source_stamp(root)}
    return sku110k.convert(root, request.data_dir, bucket=request.bucket, prefix=request.prefix, label=request.label,
                           workers=request.workers, extra=extra, log=say, max_side=request.max_side, written=written)


# How each source format is built: (request, options, record, say, progress) -> report.
BUILDERS: Dict[str, Callable[..., Dict[str, Any]]] = dict(
    {"sku110k": _sku110k}, **{fmt: _labelled for fmt in formats.FORMATS})


def build(request: Request, say: Callable[[str], None] = quiet,
          progress: Callable[[str], None] = quiet) -> Dict[str, Any]:
    """Builds DATA_DIR and returns its report; ``say`` gets the summary lines, ``progress`` the download and
    extraction ones."""
    data_dir = request.data_dir
    check_apart(data_dir, request.src, request.format)
    opts = options(request)
    if not request.force and up_to_date(data_dir, opts):
        say("data: {} is up to date ({}); --force rebuilds".format(data_dir, opts["src"]))
        with open(os.path.join(data_dir, REPORT)) as f:
            return json.load(f)
    return BUILDERS[request.format](request, opts, Written(data_dir), say, progress)
