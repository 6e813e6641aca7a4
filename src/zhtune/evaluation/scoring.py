"""Score a Classifier on a split and write the standard outputs of a run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zhtune.data import Split, Splits
from zhtune.errors import ZhtuneError
from zhtune.evaluation.metrics import classification_metrics, multilabel_metrics
from zhtune.runs import finish_model_dir, prediction_rows, write_json, write_jsonl

if TYPE_CHECKING:
    from zhtune.classifier import Classifier


def check_labels(model_labels: list[str], data_labels: list[str], where: str = "") -> None:
    """ZhtuneError unless the model and the data have the same labels in the same order."""
    if list(model_labels) != list(data_labels):
        raise ZhtuneError(
            f"{where + ': ' if where else ''}the model's labels {list(model_labels)} differ from the "
            f"data's labels {list(data_labels)}; use data with the same label set"
        )


def check_label_kind(clf: Classifier, split: Split) -> None:
    """ZhtuneError when a multi-label model meets single-label data, or the other way round."""
    if clf.multi_label != split.multi_label:
        model = "a multi-label" if clf.multi_label else "a single-label"
        data = "multi-label" if split.multi_label else "single-label"
        hint = "drop --multi-label" if split.multi_label else "add --multi-label true"
        raise ZhtuneError(f"{clf.path} is {model} model but the data is {data}; {hint}")


def dir_size(
    path: str | Path, patterns: tuple[str, ...] = ("*.safetensors", "baseline.json", "*.onnx")
) -> int:
    """Bytes of the model weight files in a directory; an ensemble's include its members'
    (they all run at prediction time)."""
    from zhtune.runs import read_manifest

    p = Path(path)
    own = sum(f.stat().st_size for pat in patterns for f in p.glob(pat))
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("kind") == "ensemble":
        own += sum(dir_size(m, patterns) for m in manifest.get("members", []) if Path(m).is_dir())
    return own


def score(
    clf: Classifier, split: Split, labels: list[str], batch_size: int = 64
) -> tuple[dict, np.ndarray]:
    """Metrics (plus texts/s) and probabilities of ``clf`` on ``split``."""
    check_label_kind(clf, split)
    check_labels(clf.labels, labels)
    t = time.perf_counter()
    probs = clf.predict_proba(split.texts, batch_size=batch_size)
    seconds = time.perf_counter() - t
    if clf.thresholds is not None:
        from zhtune.data.labels import LabelMap
        from zhtune.data.multilabel import indicator

        y = indicator(split.labels, LabelMap(tuple(labels)))
        cut = np.array([clf.thresholds[n] for n in labels])
        metrics = multilabel_metrics(y, probs, labels, cut)
    else:
        gold = [labels.index(lbl) for lbl in split.labels]
        metrics = classification_metrics(gold, probs, labels)
    metrics["texts_per_second"] = len(split) / max(seconds, 1e-9)
    return metrics, probs


def write_test_outputs(
    clf: Classifier,
    splits: Splits,
    out: str | Path,
    *,
    extra: dict | None = None,
    split: str = "test",
    batch_size: int = 64,
) -> dict:
    """``metrics.json``, ``predictions.jsonl``, confusion matrix and per-class PNGs; then the
    weight digests in ``zhtune.json`` and the model card (:func:`zhtune.runs.finish_model_dir`)."""
    from zhtune import plots

    out = Path(out)
    data = splits.get(split)
    labels = list(splits.label_map.names)
    metrics, probs = score(clf, data, labels, batch_size)
    metrics = {"split": split, **metrics, "model_bytes": dir_size(out), **(extra or {})}
    write_json(out / "metrics.json", metrics)
    write_jsonl(
        out / "predictions.jsonl", prediction_rows(data.texts, data.labels, clf.format(probs))
    )
    if "confusion_matrix" in metrics:  # multi-label runs have per-label scores only
        plots.confusion_matrix_png(
            metrics["confusion_matrix"], labels, out / "confusion_matrix.png"
        )
    plots.per_class_png(metrics["per_class"], out / "per_class.png")
    finish_model_dir(out, metrics)
    return metrics
