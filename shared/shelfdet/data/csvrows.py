"""Reads SKU-110K's header-less 8-column CSVs into numpy columns, fast and loud.

A full-size CSV has 1.73M rows: even the C csv module makes one Python list
per row, too slow on a small machine. So well-formed rows (8 fields, plain
integer coordinates, class "object", no quotes) are split and parsed with
numpy on the raw bytes; every other line goes through the csv module and
``float`` one by one, which also names the offending line and field. Every row
that cannot become a box is returned as a problem, never skipped quietly.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.data import CSV_CLASS, checks

COLUMNS = ("image_name", "x1", "y1", "x2", "y2", "class", "image_width", "image_height")
NUMERIC = (1, 2, 3, 4, 6, 7)  # column indices, in the order of Rows.values


class Rows(NamedTuple):
    """Parsed rows: ``values`` is (n, 6) float64: x1, y1, x2, y2, csv width, csv height."""

    photo: np.ndarray  # int32 index into names
    values: np.ndarray
    file: np.ndarray  # int16 index into files
    line: np.ndarray  # int32, 1-based: there is no header line
    names: List[str]
    files: List[str]


def _slow_row(text: str) -> List[str]:
    return next(csv.reader([text]), [])


def _row_values(row: List[str]) -> Optional[np.ndarray]:
    if len(row) != len(COLUMNS) or row[5] != CSV_CLASS:
        return None
    try:
        vals = np.array([float(row[k]) for k in NUMERIC])
    except ValueError:
        return None
    return vals if np.isfinite(vals).all() else None


_ZEROS = 0x3030303030303030
_HIGH_NIBBLES = 0xF0F0F0F0F0F0F0F0
_U64 = np.uint64


class _Words:
    """Reads the 8 bytes at any offset of a byte buffer as one little-endian uint64.

    One gather per field instead of one per byte: the fast path is bound by
    the number of numpy passes over ~1.7M-element arrays.
    """

    def __init__(self, buf: bytes):
        self.size = len(buf)
        self.padded = bytes(8) + buf + bytes(8)
        self.view = np.ndarray((len(self.padded) - 7,), dtype="<u8", buffer=self.padded, strides=(1,))

    def starting(self, pos: np.ndarray) -> np.ndarray:
        return self.view[pos + 8]

    def ending(self, pos: np.ndarray) -> np.ndarray:
        return self.view[pos]


def _low_bytes_mask(n: np.ndarray) -> np.ndarray:
    """uint64 masks keeping the lowest ``n`` bytes (0 <= n <= 8)."""
    n = np.clip(n, 0, 8).astype(_U64)
    full = n == 8
    mask = (_U64(1) << (np.where(full, 0, n) * _U64(8)).astype(_U64)) - _U64(1)
    mask[full] = ~_U64(0)
    return mask


def _parse_digits(words: _Words, start: np.ndarray, end: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unsigned integers of 1-8 digits, SWAR-parsed; anything else is left to the slow path."""
    length = end - start
    ok = (length >= 1) & (length <= 8)
    x = words.ending(end)
    # The bytes before the field sit in the low end of the word: make them '0'.
    pad = _low_bytes_mask(8 - length)
    x = (x & ~pad) | (_U64(_ZEROS) & pad)
    ok &= (x & _U64(_HIGH_NIBBLES)) == _U64(_ZEROS)
    ok &= ((x + _U64(0x0606060606060606)) & _U64(_HIGH_NIBBLES)) == _U64(_ZEROS)
    x = x & _U64(0x0F0F0F0F0F0F0F0F)
    x = ((x * _U64(2561)) >> _U64(8)) & _U64(0x00FF00FF00FF00FF)
    x = ((x * _U64(6553601)) >> _U64(16)) & _U64(0x0000FFFF0000FFFF)
    x = (x * _U64(42949672960001)) >> _U64(32)
    return x.astype(np.float64), ok


def _same_as_previous(words: _Words, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    length = end - start
    same = np.zeros(len(start), bool)
    same[1:] = length[1:] == length[:-1]
    for k in range(0, int(length.max()) if len(length) else 0, 8):
        # A shorter name near the end of the block has nothing at start + k: its bytes there are masked
        # out, but the read itself must stay inside the buffer.
        w = words.starting(np.minimum(start + k, words.size)) & _low_bytes_mask(length - k)
        same[1:] &= w[1:] == w[:-1]
    return same


def _parse_block(buf: bytes, first_line: int) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray, List[Tuple[int, str]]]:
    """One newline-terminated block -> clean rows (names per run, run lengths, values, line numbers)
    and the other non-blank lines as (line number, text)."""
    a = np.frombuffer(buf, np.uint8)
    words = _Words(buf)
    nl = np.flatnonzero(a == 10)
    starts = np.concatenate([[0], nl[:-1] + 1]).astype(np.int64)
    ends = nl.copy()
    cr = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13)
    ends[cr] -= 1
    lines = first_line + np.arange(len(nl), dtype=np.int64)
    blank = ends == starts
    commas = np.flatnonzero(a == 44)
    first_comma = np.searchsorted(commas, starts)
    fast_mask = (np.searchsorted(commas, nl) - first_comma == 7) & ~blank
    if b'"' in buf:
        quotes = np.flatnonzero(a == 34)
        fast_mask &= np.searchsorted(quotes, nl) == np.searchsorted(quotes, starts)
    fast = np.flatnonzero(fast_mask)
    c = commas[first_comma[fast][:, None] + np.arange(7)[None, :]]
    fstart = np.column_stack([starts[fast], c + 1])
    fend = np.column_stack([c, ends[fast]])
    cls = CSV_CLASS.encode()
    good = fend[:, 5] - fstart[:, 5] == len(cls)
    cls_word = int.from_bytes(cls[:8], "little")
    good &= (words.starting(fstart[:, 5]) & _low_bytes_mask(np.full(len(fast), min(8, len(cls))))) == _U64(cls_word)
    if len(cls) > 8:  # pragma: no cover - the real class is "object"
        good[:] = False
    values = np.empty((len(fast), len(NUMERIC)), np.float64)
    for j, k in enumerate(NUMERIC):
        values[:, j], ok = _parse_digits(words, fstart[:, k], fend[:, k])
        good &= ok
    fast_good = fast[good]
    values = values[good]
    # Rows come grouped by photo: decode one name per run, not one per row.
    ns, ne = fstart[good, 0], fend[good, 0]
    run_starts = np.flatnonzero(~_same_as_previous(words, ns, ne))
    run_names = [buf[ns[i]:ne[i]].decode("utf-8", "replace") for i in run_starts]
    run_lengths = np.diff(np.append(run_starts, len(ns)))
    mask = np.ones(len(nl), bool)
    mask[fast_good] = False
    mask &= ~blank
    others = [(int(lines[i]), buf[starts[i]:ends[i]].decode("utf-8", "replace")) for i in np.flatnonzero(mask)]
    return run_names, run_lengths, values, lines[fast_good], others


def _blocks(f: Any) -> Iterator[Tuple[bytes, int]]:
    line_no = 1
    while True:
        buf = f.read(BLOCK)
        if not buf:
            return
        buf += f.readline()
        if not buf.endswith(b"\n"):
            buf += b"\n"
        yield buf, line_no
        line_no += buf.count(b"\n")


BLOCK = 8 << 20  # bytes; a few blocks per worker keep both cores busy


def read(paths: List[str]) -> Tuple[Rows, List[Dict[str, Any]], int]:
    """Returns (rows that parsed, problems for those that did not, number of non-blank rows seen)."""
    index: Dict[str, int] = {}
    photos, values, files, lines = [], [], [], []
    problems: List[Dict[str, Any]] = []
    seen = 0
    slow_rows = False
    # numpy releases the GIL in its loops, so blocks parse in parallel threads.
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for fid, path in enumerate(paths):
            with open(path, "rb") as f:
                results = pool.map(lambda job: _parse_block(*job), _blocks(f))
                for run_names, run_lengths, vals, lns, others in results:
                    run_ids = [index.setdefault(n, len(index)) for n in run_names]
                    ids = np.repeat(np.array(run_ids, np.int32), run_lengths)
                    seen += len(ids) + len(others)
                    extra_ids, extra_vals, extra_lines = [], [], []
                    for ln, text in others:
                        row = _slow_row(text)
                        v = _row_values(row)
                        if v is None:
                            problems.append(checks.csv_row(path, ln, row, COLUMNS, NUMERIC, CSV_CLASS))
                        else:
                            extra_ids.append(index.setdefault(row[0], len(index)))
                            extra_vals.append(v)
                            extra_lines.append(ln)
                            slow_rows = True
                    photos += [ids, np.array(extra_ids, np.int32)]
                    values += [vals, np.array(extra_vals, np.float64).reshape(-1, len(NUMERIC))]
                    lines += [lns, np.array(extra_lines, np.int64)]
                    files.append(np.full(len(ids) + len(extra_ids), fid, dtype=np.int16))
    names = [""] * len(index)
    for name, i in index.items():
        names[i] = name

    def cat(parts: List[np.ndarray], dtype: Any, shape: Tuple[int, ...] = (0,)) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    rows = Rows(cat(photos, np.int32), cat(values, np.float64, (0, 6)), cat(files, np.int16),
                cat(lines, np.int32), names, list(paths))
    if slow_rows:  # they were appended after their block's fast rows: restore file order
        order = np.lexsort((rows.line, rows.file))
        rows = rows._replace(photo=rows.photo[order], values=rows.values[order], file=rows.file[order],
                             line=rows.line[order])
    return rows, problems, seen
