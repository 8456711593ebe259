"""Whether a name from outside (a label file, a manifest, a CSV row, an S3 key) may become a local path.

Label files and S3 listings are written by other tools and other people: a name in them must never
reach a file outside the folder it belongs to, neither to read it nor to write, link or remove it.
Every reader and downloader builds such paths through :func:`inside`, and nothing else decides.
"""
from __future__ import annotations

import os
import re

# A Windows drive ("C:", "c:foo"): harmless on Linux, but such a name was never meant for this folder.
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeName(ValueError):
    """The name cannot become a path in its folder; the message quotes it and says why."""


def check(name: str, subpath: bool = False) -> str:
    """``name`` when its text may name a file in a folder (see :func:`inside`); else :class:`UnsafeName`."""
    if not isinstance(name, str) or not name:
        raise UnsafeName("{!r}: not a file name (empty, or not text)".format(name))
    if "\0" in name:
        raise UnsafeName("{!r}: holds a NUL byte".format(name))
    if "\\" in name or _DRIVE.match(name):
        raise UnsafeName("{!r}: a backslash or a drive letter (a Windows path)".format(name))
    if name.startswith("/"):
        raise UnsafeName("{!r}: an absolute path, where a name relative to its folder is expected".format(name))
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeName("{!r}: a '..' component leads out of its folder".format(name))
    if not subpath and len(parts) > 1:
        raise UnsafeName("{!r}: a path, where a bare file name is expected".format(name))
    if "" in parts or "." in parts:
        raise UnsafeName("{!r}: not a normalised relative path (an empty or '.' component)".format(name))
    return name


def inside(folder: str, name: str, subpath: bool = False, absolute: bool = False, links: bool = False) -> str:
    """``folder/name``, when ``name`` may be a path there; else :class:`UnsafeName`.

    ``subpath=False`` (file names in label files): a bare file name. ``subpath=True`` (S3 keys under a
    prefix, a COCO ``file_name`` with folders): a normalised relative path (``a/b.jpg``; no ``..``,
    ``.`` or empty parts). The path with symbolic links resolved must lie below the folder resolved,
    so a link inside the folder that points out of it is refused too; ``links=True`` (reading a
    source folder) follows the links its owner put there, as they are theirs, not a label's.
    ``absolute=True`` (a Ground Truth manifest's local source-ref): an absolute path is taken when it
    names a file below ``folder``, as the same relative path.
    """
    if absolute and isinstance(name, str) and name.startswith("/"):
        top = os.path.abspath(folder).rstrip(os.sep) + os.sep
        if name.startswith(top):
            name = name[len(top):]
    check(name, subpath)
    path = os.path.join(folder, name)
    if links:
        return path
    root = os.path.realpath(folder)
    if not os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafeName("{!r}: leads out of {} through a symbolic link".format(name, folder))
    return path
