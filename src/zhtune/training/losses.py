"""Losses of the classification commands: class weights (``none``, ``balanced`` or a list)
and focal loss, as a ``compute_loss_func`` for the HF Trainer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from zhtune.config import check
from zhtune.errors import ConfigError

if TYPE_CHECKING:
    from zhtune.training.trainer import TrainingConfig


def parse_class_weights(spec: str) -> str | list[float]:
    """``none`` / ``balanced`` / a list of positive floats; one-line ConfigError otherwise."""
    s = (spec or "none").strip().lower()
    if s in ("none", "balanced"):
        return s
    try:
        weights = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"config field 'class_weights': {spec!r} is not none, balanced or a comma list of numbers"
        ) from None
    check(
        bool(weights) and all(w > 0 for w in weights),
        "class_weights",
        f"weights must be positive numbers, got {spec!r}",
    )
    return weights


def class_weight_tensor(spec: str, label_ids: Sequence[int], n_labels: int):
    """Per-class loss weights as a float tensor, or None for ``none``."""
    import torch

    parsed = parse_class_weights(spec)
    if parsed == "none":
        return None
    if parsed == "balanced":
        counts = np.bincount(np.asarray(label_ids), minlength=n_labels).astype(np.float64)
        counts[counts == 0] = 1.0
        w = len(label_ids) / (n_labels * counts)
    else:
        check(
            len(parsed) == n_labels,
            "class_weights",
            f"got {len(parsed)} weights for {n_labels} labels",
        )
        w = np.asarray(parsed, dtype=np.float64)
    return torch.tensor(w, dtype=torch.float32)


def focal_loss(logits, labels, gamma: float = 2.0, weight=None, num_items: Any = None):
    """Focal loss (Lin et al. 2017): ``sum_i w_{y_i} (1 - p_i)^gamma (-log p_i) / N``.

    logits (B, C), labels (B,), weight (C,) or None; ``N = num_items`` (the number of examples
    in the whole accumulated batch, as the Trainer passes it) or ``B``."""
    import torch
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    logp_y = logp.gather(1, labels.view(-1, 1)).squeeze(1)  # (B,)
    per_example = -logp_y
    if gamma:
        per_example = per_example * (1 - logp_y.exp()).clamp(min=0).pow(gamma)
    if weight is not None:
        per_example = per_example * weight.to(logits.device)[labels]
    n = num_items if num_items is not None else labels.numel()
    if isinstance(n, torch.Tensor):
        n = n.to(per_example.device)
    return per_example.sum() / n


def make_loss_fn(cfg: TrainingConfig, weight=None) -> Callable | None:
    """``compute_loss_func`` for the Trainer, or None for the model's plain cross-entropy."""
    if cfg.loss == "ce" and weight is None:
        return None
    gamma = cfg.gamma if cfg.loss == "focal" else 0.0

    def compute_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return focal_loss(logits, labels, gamma, weight, num_items_in_batch)

    return compute_loss


# --- metrics -----------------------------------------------------------------------------
