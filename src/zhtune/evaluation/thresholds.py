"""Multi-label decisions: per-label thresholds tuned on the dev split, or one global value.

A label is predicted when its independent probability is >= its threshold. Tuning picks, per
label, the candidate threshold (every distinct dev probability, plus 0.5) that maximises that
label's F1 on dev; ties go to the candidate closest to 0.5. The thresholds are written to the
model's ``zhtune.json`` (``thresholds``), where ``Classifier`` reads them, so predict, evaluate
and serve use them with no flag.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

DEFAULT = 0.5


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One threshold per label (column), maximising that label's F1 on (y_true, probs)."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out = np.full(y.shape[1], DEFAULT)
    for j in range(y.shape[1]):
        if y[:, j].sum() == 0:
            continue  # no positive on dev: nothing to tune on, keep the default
        cands = np.unique(np.append(probs[:, j], DEFAULT))
        scores = [f1_score(y[:, j], probs[:, j] >= t, zero_division=0) for t in cands]
        best = max(scores)
        ties = cands[np.isclose(scores, best)]
        out[j] = float(ties[np.argmin(np.abs(ties - DEFAULT))])
    return out


def decide(
    y_dev: np.ndarray, probs_dev: np.ndarray, labels: Sequence[str], threshold: float | None
) -> dict:
    """The ``thresholds`` entry of a multi-label model's manifest: label -> threshold."""
    if threshold is not None:
        values = np.full(len(labels), float(threshold))
    else:
        values = tune_thresholds(y_dev, probs_dev)
    return {name: float(v) for name, v in zip(labels, values, strict=True)}
