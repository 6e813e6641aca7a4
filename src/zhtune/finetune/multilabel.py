"""Multi-label encoders: BCE with per-label positive weights, dev metrics, thresholds.

The model is the usual ``AutoModelForSequenceClassification`` with
``problem_type="multi_label_classification"`` (one sigmoid per label, binary cross-entropy).
``--class-weights balanced`` becomes BCE's ``pos_weight`` (negatives / positives per label);
a comma list gives one positive weight per label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.config import check
from zhtune.training.losses import parse_class_weights

PROBLEM_TYPE = "multi_label_classification"


def pos_weight_tensor(spec: str, y: np.ndarray):
    """BCE ``pos_weight`` (one per label) for ``--class-weights``, or None for ``none``."""
    import torch

    parsed = parse_class_weights(spec)
    if parsed == "none":
        return None
    if parsed == "balanced":
        pos = np.asarray(y).sum(0).astype(np.float64)
        w = (len(y) - pos) / np.maximum(pos, 1.0)
    else:
        check(
            len(parsed) == y.shape[1],
            "class_weights",
            f"got {len(parsed)} weights for {y.shape[1]} labels",
        )
        w = np.asarray(parsed, dtype=np.float64)
    return torch.tensor(w, dtype=torch.float32)


def bce_loss_fn(pos_weight: Any) -> Callable | None:
    """``compute_loss_func`` for the Trainer (None: the model's own unweighted BCE)."""
    if pos_weight is None:
        return None

    def compute_loss(outputs, labels, num_items_in_batch=None):
        import torch.nn.functional as F

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return F.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), pos_weight=pos_weight.to(logits.device)
        )

    return compute_loss


def make_compute_metrics(labels: Sequence[str]) -> Callable:
    """Dev metrics during training (threshold 0.5; on windows for ``--long-text chunks``).
    ``accuracy`` is the subset accuracy, so every ``--metric-for-best`` choice exists."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    def compute(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        y_pred = (np.asarray(logits) >= 0).astype(int)  # sigmoid(z) >= 0.5
        y = np.asarray(pred.label_ids).astype(int)
        p, r, f, _ = precision_recall_fscore_support(y, y_pred, average="macro", zero_division=0)
        _, _, micro, _ = precision_recall_fscore_support(
            y, y_pred, average="micro", zero_division=0
        )
        _, _, per, _ = precision_recall_fscore_support(y, y_pred, average=None, zero_division=0)
        out = {
            "accuracy": float(accuracy_score(y, y_pred)),
            "macro_precision": float(p),
            "macro_recall": float(r),
            "macro_f1": float(f),
            "micro_f1": float(micro),
        }
        out.update({f"f1_{name}": float(v) for name, v in zip(labels, per, strict=True)})
        return out

    return compute


def tune_and_store(out: Path, splits: Any, threshold: float | None, bs: int):
    """Thresholds from the dev split (or ``--threshold``) into ``zhtune.json``; the Classifier."""
    from zhtune.classifier import Classifier
    from zhtune.evaluation.thresholds import decide
    from zhtune.runs import read_manifest, write_manifest

    labels = list(splits.label_map.names)
    clf = Classifier.load(out)
    y_dev = splits.dev.label_matrix(splits.label_map)
    probs = clf.predict_proba(splits.dev.texts, batch_size=bs)
    cuts = decide(y_dev, probs, labels, threshold)
    manifest = {
        k: v for k, v in (read_manifest(out) or {}).items() if k not in ("labels", "zhtune_version")
    }
    kind = manifest.pop("kind")
    write_manifest(out, kind, labels, **{**manifest, "multi_label": True, "thresholds": cuts})
    return Classifier.load(out)


def training_inputs(cfg: Any, splits: Any, tokenizer: Any) -> tuple[Any, Any]:
    """(train, dev) datasets for the Trainer, for the data's label kind (single / multi-label)
    and ``cfg.long_text`` (commands without it truncate)."""
    from zhtune.finetune.longtext import tokenize_documents
    from zhtune.training.trainer import tokenize_split

    lm = splits.label_map
    mode, stride = getattr(cfg, "long_text", "truncate"), getattr(cfg, "stride", 0)
    if not splits.multi_label and mode == "truncate":
        enc = [tokenize_split(s, lm, tokenizer, cfg.max_length) for s in (splits.train, splits.dev)]
        return enc[0], enc[1]
    sets = []
    for s in (splits.train, splits.dev):
        targets = (
            s.label_matrix(lm).astype(np.float32).tolist() if s.multi_label else s.label_ids(lm)
        )
        sets.append(tokenize_documents(s.texts, targets, tokenizer, cfg.max_length, mode, stride))
    return sets[0], sets[1]


def manifest_extra(cfg: Any, multi_label: bool) -> dict:
    """What a multi-label / long-text model (encoder or LoRA head) adds to ``zhtune.json``."""
    extra: dict = dict(cfg.long_text_manifest())
    if multi_label:
        extra["multi_label"] = True
    return extra


def trainer_hooks(cfg: Any, splits: Any, single_label_loss: Any) -> dict:
    """``loss_fn`` / ``compute_metrics`` for ``run_trainer``: BCE and multi-label dev metrics
    for multi-label data, else ``single_label_loss`` and the default metrics."""
    if not splits.multi_label:
        return {"loss_fn": single_label_loss}
    weight = pos_weight_tensor(cfg.class_weights, splits.train.label_matrix(splits.label_map))
    check(
        cfg.loss == "ce",
        "loss",
        "multi-label models train with binary cross-entropy: use --loss ce",
    )
    return {
        "loss_fn": bce_loss_fn(weight),
        "compute_metrics": make_compute_metrics(list(splits.label_map.names)),
    }
