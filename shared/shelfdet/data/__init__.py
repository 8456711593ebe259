"""The data pipeline: synthetic SKU-110K, SKU-110K -> augmented manifests, upload.

Names shared by its modules live here so that the converter, the generator and
the tests agree on the layout (SKU110K_fixed's CSVs, the channels) without importing each other.
"""
from __future__ import annotations

from typing import Dict, Optional

from shelfdet.core import CHANNELS  # noqa: F401 - the data room's name for it

# SKU-110K splits by file-name prefix, not by which CSV a row came from.
PREFIX_TO_CHANNEL: Dict[str, str] = {"train_": "training", "val_": "validation", "test_": "test"}
SPLITS = ("train", "val", "test")
ROOT_NAME = "SKU110K_fixed"
CSV_CLASS = "object"
DEFAULT_LABEL = "sku"
CLASS_MAP = {"0": "SKU"}
REPORT = "report.json"


def channel_of(photo_name: str) -> Optional[str]:
    for prefix, channel in PREFIX_TO_CHANNEL.items():
        if photo_name.startswith(prefix):
            return channel
    return None


def csv_name(split: str) -> str:
    return "annotations_{}.csv".format(split)


class DataError(RuntimeError):
    """A source or data folder cannot be used; the message says which and why (printed without traceback)."""
