"""Probabilities: the one softmax and temperature helper (numpy, float64 rows)."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shape kept: (N, C) -> (N, C)."""
    z = np.array(logits, dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log(p) with p clipped to [1e-12, 1]: logits up to a per-row constant."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T): what ``Classifier(calibrated=True)`` applies."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    return softmax(log_probs(probs) / temperature)
