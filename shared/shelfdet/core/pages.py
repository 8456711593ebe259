"""Generated blocks of the docs: the text between ``<!-- name:start -->`` and ``<!-- name:end -->``
(the hyperparameter table, the benchmark tables), read by the tests and rewritten by their writers."""
from __future__ import annotations

from typing import Optional, Tuple


def markers(name: str) -> Tuple[str, str]:
    return "<!-- {}:start -->".format(name), "<!-- {}:end -->".format(name)


def block(page: str, name: str) -> Optional[str]:
    """The block as written (one newline after the start marker and before the end one); None without markers."""
    start, end = markers(name)
    if start not in page or end not in page:
        return None
    inner = page.split(start, 1)[1].split(end, 1)[0]
    inner = inner[1:] if inner.startswith("\n") else inner
    return inner[:-1] if inner.endswith("\n") else inner


def replace_block(page: str, name: str, text: str) -> str:
    """The page with the block's text replaced; the page must have the block's markers."""
    start, end = markers(name)
    head, rest = page.split(start, 1)
    return head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
