"""The data layer: readers, built-in datasets, label maps and deterministic splits."""

from zhtune.data.builtin import BUILTIN
from zhtune.data.labels import LabelMap
from zhtune.data.readers import BadRows, Row, read_file, read_folder
from zhtune.data.splits import DataConfig, Split, Splits, load_splits

__all__ = [
    "BUILTIN",
    "BadRows",
    "DataConfig",
    "LabelMap",
    "Row",
    "Split",
    "Splits",
    "load_splits",
    "read_file",
    "read_folder",
]
