"""Classification metrics shared by every command (one ``metrics.json`` schema)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro/weighted P/R/F1, per-class P/R/F1/support, confusion matrix, ROC-AUC
    (binary, or one-vs-rest macro) and log loss, from gold ids and predicted probabilities."""
    y = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    out: dict = {
        "n": int(len(y)),
        "labels": list(labels),
        "accuracy": float(accuracy_score(y, pred)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=ids, average=avg, zero_division=0
        )
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = (
            float(p),
            float(r),
            float(f),
        )
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, average=None, zero_division=0)
    out["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(labels)
    }
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=ids).tolist()
    present = np.unique(y)
    try:
        if len(labels) == 2:
            out["roc_auc"] = float(roc_auc_score(y, probs[:, 1])) if len(present) == 2 else None
        else:
            out["roc_auc"] = (
                float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=ids))
                if len(present) == len(labels)
                else None
            )
    except ValueError:
        out["roc_auc"] = None
    clipped = np.clip(probs, 1e-12, 1.0)
    out["log_loss"] = float(log_loss(y, clipped / clipped.sum(1, keepdims=True), labels=ids))
    return out


def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: np.ndarray
) -> dict:
    """Multi-label metrics from a 0/1 gold matrix, independent probabilities and per-label
    thresholds (a label is predicted when its probability >= its threshold): micro / macro /
    samples F1, hamming loss, subset accuracy (exact label set), per-label P/R/F1/support and
    ROC-AUC (None where the label is always or never present)."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(np.int64)
    out: dict = {"n": int(len(y)), "labels": list(labels), "multi_label": True}
    for avg in ("micro", "macro", "samples"):
        out[f"{avg}_f1"] = float(f1_score(y, pred, average=avg, zero_division=0))
    out["hamming_loss"] = float(hamming_loss(y, pred))
    out["subset_accuracy"] = float(accuracy_score(y, pred))
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    per: dict = {}
    for i, name in enumerate(labels):
        col = y[:, i]
        auc = float(roc_auc_score(col, probs[:, i])) if 0 < col.sum() < len(col) else None
        per[name] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "roc_auc": auc,
            "threshold": float(thresholds[i]),
        }
    out["per_class"] = per
    aucs = [v["roc_auc"] for v in per.values() if v["roc_auc"] is not None]
    out["roc_auc"] = float(np.mean(aucs)) if aucs else None
    out["mean_labels_per_row"] = {
        "gold": float(y.sum(1).mean()),
        "predicted": float(pred.sum(1).mean()),
    }
    return out


MULTI_LABEL_COLUMNS = [
    ("micro_f1", "micro-F1"),
    ("macro_f1", "macro-F1"),
    ("samples_f1", "samples-F1"),
    ("subset_accuracy", "subset acc"),
    ("hamming_loss", "hamming"),
]


def table_columns(metrics: dict, columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A command's summary columns; multi-label metrics replace the single-label scores."""
    if not metrics.get("multi_label"):
        return columns
    # and no temperature scaling for independent probabilities: no "ECE (T-scaled)"
    single = {"accuracy", "macro_f1", "weighted_f1", "dev_accuracy", "dev_macro_f1",
              "ece_calibrated"}  # fmt: skip
    kept = [c for c in columns if c[0] not in single]
    return kept[:1] + MULTI_LABEL_COLUMNS + kept[1:]


# the end-of-run table of every training command (columns a run lacks are left out)
RUN_SUMMARY_COLUMNS = [
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("weighted_f1", "weighted-F1"),
    ("roc_auc", "ROC-AUC"),
    ("dev_accuracy", "dev accuracy"),
    ("dev_macro_f1", "dev macro-F1"),
    ("n", "test rows"),
    ("steps", "steps"),
    ("train_seconds", "train s"),
    ("model_bytes", "model bytes"),
    ("texts_per_second", "texts/s"),
]


def print_run_summary(metrics: dict, out: object) -> None:
    """Print a finished run's one-row table (the columns it has) and its directory."""
    cols = [c for c in table_columns(metrics, RUN_SUMMARY_COLUMNS) if metrics.get(c[0]) is not None]
    print(format_table([metrics], cols))
    print(f"\nrun directory: {out}")


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` is a list of (key, header). Floats get 4 decimals."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
