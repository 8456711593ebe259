"""Files written whole or not at all: written beside their place, then moved onto it."""
from __future__ import annotations

import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def temp_beside(path: str) -> str:
    """A new, empty file in ``path``'s folder, to be written and then moved onto ``path``: made exclusively,
    so a file or link already there under a fixed ``<name>.tmp`` is never written through or replaced."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would have made it
    return tmp
