"""Probabilities: the one softmax and temperature helper (numpy, float64 rows).

Temperature scaling divides the *logits* (or class scores) by T. Where a backend only gives
probabilities, ``log(p)`` stands in for the logits: it is exact up to a per-row constant
while ``p`` is a normal float64 (logit gaps up to ~708; a clip at 1e-12 would cut every gap
over 27.6 and change the calibrated probabilities of confident rows)."""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float64).tiny)  # ~2.2e-308: log(EPS) ~ -708


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shape kept: (N, C) -> (N, C)."""
    z = np.array(logits, dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log(p) with p clipped to [tiny, 1] (float64): logits up to a per-row constant."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T), for backends without logits (prefer
    :func:`temperature_softmax` on the logits)."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    return softmax(log_probs(probs) / temperature)


def temperature_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) in float64: what ``Classifier(calibrated=True)`` applies."""
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))
