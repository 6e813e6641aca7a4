"""Multi-label data: label-indicator matrices and splits stratified on label combinations.

Splits use iterative stratification (Sechidis et al. 2011, via the ``iterative-stratification``
package, module ``iterstrat``): it keeps each label's share, and as far as possible each pair
of labels' share, the same in every part, which a plain stratified split on the label sets
cannot do once many combinations are rare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from zhtune.data.labels import LabelMap
from zhtune.errors import DataError


def indicator(label_sets: Sequence[Sequence[str]], label_map: LabelMap) -> np.ndarray:
    """(n, n_labels) 0/1 matrix in label-map order."""
    l2i = label_map.label2id
    y = np.zeros((len(label_sets), len(label_map)), dtype=np.int64)
    for i, names in enumerate(label_sets):
        for n in names:
            y[i, l2i[n]] = 1
    return y


def label_counts(label_sets: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many rows carry each label (a row counts once per label it has)."""
    return dict(Counter(n for names in label_sets for n in names))


def stratified_indices(
    label_sets: Sequence[Sequence[str]], label_map: LabelMap, size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, split-off) row indices; ``size`` rows (int) or share (float) are split off."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    y = indicator(label_sets, label_map)
    n = len(label_sets)
    n_off = size if isinstance(size, int) else int(round(size * n))
    if n_off < 1 or n_off >= n:
        raise DataError(
            f"cannot split {n_off} of {n} multi-label rows off; add rows or give the split as a file"
        )
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_off, random_state=seed)
    keep, off = next(splitter.split(np.zeros((n, 1)), y))
    return np.sort(keep), np.sort(off)


def require_single_label(splits: object, what: str) -> None:
    """A clear error for commands that have no multi-label mode (label scoring, zero-shot)."""
    if getattr(splits, "multi_label", False):
        raise DataError(
            f"{what} picks one label per text and has no multi-label mode; for multi-label data "
            "use zhtune baseline or zhtune finetune"
        )
