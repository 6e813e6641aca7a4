"""Zero-shot calibration: a per-class bias subtracted from label-scoring logits.

A small or un-instructed causal LM often prefers one label word whatever the text (the
zero-shot row then predicts one class for every text). Two standard corrections, both
without labels:

- ``content-free`` (Zhao et al. 2021, "Calibrate Before Use"): score content-free inputs
  (``""``, ``"N/A"``, ``"[MASK]"``) in the same prompt; the bias is the log of their mean
  class probabilities, so a content-free text becomes uniform;
- ``dev-mean`` (Zhou et al. 2024, "Batch Calibration"): the log of the mean class
  probabilities over the dev texts (their labels are not read), so the classes are
  predicted about equally often on data like the dev split.

The bias is stored in ``zhtune.json`` (``class_bias``) and applied by every later load
(evaluate, predict, serve), so the run predicts what its metrics say.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from zhtune.errors import ConfigError

CALIBRATIONS = ("none", "content-free", "dev-mean")
CONTENT_FREE = ("", "N/A", "[MASK]")


def log_mean_probs(scores: np.ndarray) -> np.ndarray:
    """log(mean over rows of softmax(scores)): (N, C) -> (C,)."""
    from scipy.special import logsumexp

    log_p = scores - logsumexp(scores, axis=1, keepdims=True)
    return logsumexp(log_p, axis=0) - np.log(len(scores))


def class_bias(
    method: str, score: Callable[[list[str]], np.ndarray], dev_texts: Sequence[str]
) -> tuple[list[float] | None, dict]:
    """(bias per class or None, a report) for ``method``; ``score(texts)`` gives the (N, C)
    class scores of the uncalibrated model."""
    if method not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration {method!r}; use one of {', '.join(CALIBRATIONS)}")
    if method == "none":
        return None, {"method": "none"}
    if method == "content-free":
        texts = list(CONTENT_FREE)
    else:
        texts = list(dev_texts)
        if not texts:
            raise ConfigError(
                "--calibrate dev-mean needs dev texts (give --dev, --dataset or --train), "
                "or use --calibrate content-free"
            )
    bias = log_mean_probs(np.asarray(score(texts), dtype=np.float64))
    bias -= bias.mean()  # only differences between classes matter
    return [float(b) for b in bias], {"method": method, "texts": len(texts)}
