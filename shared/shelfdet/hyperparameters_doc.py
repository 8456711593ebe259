from __future__ import annotations

from typing import List

from .hyperparameters import markdown_table


def main(argv: List[str]) -> int:
    print(markdown_table())
    return 0
