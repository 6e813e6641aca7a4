"""``zhtune evaluate`` for multi-label models: metrics, per-label calibration, robustness.

* ``metrics.json``: the multi-label metrics (:func:`~zhtune.evaluation.metrics.multilabel_metrics`)
  plus each label's ECE (its probability as a binary forecast of "this label applies"), and
  their mean ``ece``.
* ``predictions.jsonl`` / ``errors.jsonl`` (rows whose predicted label set is not the gold one,
  most confidently wrong first: :func:`confident_errors`).
* robustness: the usual perturbations; a flip is any change of the predicted label set;
  ``robustness_score`` = mean perturbed micro-F1 / clean micro-F1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zhtune.data.multilabel import indicator
from zhtune.errors import ZhtuneError
from zhtune.evaluation.calibration import expected_calibration_error
from zhtune.evaluation.metrics import multilabel_metrics
from zhtune.evaluation.scoring import dir_size, score
from zhtune.runs import prediction_rows, write_json, write_jsonl

if TYPE_CHECKING:
    from zhtune.classifier import Classifier
    from zhtune.data import Splits

log = logging.getLogger("zhtune")


def per_label_ece(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, float]:
    """ECE of each label's probability as a two-class forecast (absent, present)."""
    out = {}
    for j, name in enumerate(labels):
        p = np.stack([1 - probs[:, j], probs[:, j]], axis=1)
        out[name] = float(expected_calibration_error(p, y[:, j]))
    return out


def multilabel_robustness(
    clf: Classifier, texts: list[str], y: np.ndarray, probs: np.ndarray, cfg: Any
) -> tuple[dict, list[dict]]:
    """Perturbed micro-F1 and flip rates (a flip: the predicted label set changes)."""
    from zhtune.evaluation.perturb import DESCRIPTIONS, PERTURBATIONS, perturb
    from zhtune.evaluation.robustness import sample_rows

    labels = clf.labels
    cut = np.array([clf.thresholds[n] for n in labels])  # type: ignore[index]
    idx = sample_rows(len(texts), cfg.max_robustness_samples, cfg.seed)
    sample, ys, clean_p = [texts[i] for i in idx], y[idx], probs[idx]
    clean_pred = clean_p >= cut
    clean_f1 = multilabel_metrics(ys, clean_p, labels, cut)["micro_f1"]
    results: dict[str, dict] = {}
    flipped: list[dict] = []
    for name in PERTURBATIONS:
        try:
            noisy = perturb(sample, name, cfg.robustness_rate, cfg.seed)
        except ZhtuneError as e:
            results[name] = {"description": DESCRIPTIONS[name], "skipped": str(e)}
            continue
        p = clf.predict_proba(noisy, batch_size=cfg.batch_size)
        pred = p >= cut
        flips = np.nonzero((pred != clean_pred).any(1))[0]
        f1 = multilabel_metrics(ys, p, labels, cut)["micro_f1"]
        rows = [
            {
                "perturbation": name,
                "text": sample[i],
                "perturbed": noisy[i],
                "gold": [n for n, v in zip(labels, ys[i], strict=True) if v],
                "clean_pred": [n for n, v in zip(labels, clean_pred[i], strict=True) if v],
                "perturbed_pred": [n for n, v in zip(labels, pred[i], strict=True) if v],
            }
            for i in flips
        ]
        flipped += rows
        results[name] = {
            "description": DESCRIPTIONS[name],
            "micro_f1": f1,
            "drop": clean_f1 - f1,
            "flip_rate": float(len(flips) / max(len(sample), 1)),
            "examples": rows[:5],
        }
    scored = [r["micro_f1"] for r in results.values() if "micro_f1" in r]
    summary = {
        "n": len(sample),
        "clean_micro_f1": clean_f1,
        "robustness_score": float(np.mean(scored)) / clean_f1 if scored and clean_f1 else None,
        "mean_flip_rate": (
            float(np.mean([r["flip_rate"] for r in results.values() if "flip_rate" in r]))
            if scored
            else None
        ),
        "perturbations": results,
    }
    return summary, flipped


def confident_errors(rows: list[dict], y: np.ndarray, probs: np.ndarray) -> list[dict]:
    """The rows whose predicted label set is not the gold one, most confidently wrong first:
    by their largest gap between a label's probability and its 0/1 gold value."""
    gap = np.abs(probs - y).max(1)
    wrong = [i for i, r in enumerate(rows) if set(r["labels"]) != set(r["gold"])]
    return [rows[i] for i in sorted(wrong, key=lambda i: (-gap[i], i))]


def evaluate_multilabel(
    clf: Classifier, splits: Splits, cfg: Any, out: Path, name: str | None = None
) -> dict:
    """Write the evaluation of a multi-label model into ``out``; returns the summary row."""
    from zhtune import plots

    labels = list(splits.label_map.names)
    data = splits.get(cfg.split)
    metrics, probs = score(clf, data, labels, cfg.batch_size)
    y = indicator(data.labels, splits.label_map)
    ece = per_label_ece(y, probs, labels)
    for n in labels:
        metrics["per_class"][n]["ece"] = ece[n]
    metrics.update(
        split=cfg.split, model=str(clf.path), kind=clf.kind, ece=float(np.mean(list(ece.values())))
    )
    metrics["model_bytes"] = dir_size(clf.path) if Path(str(clf.path)).is_dir() else None
    rows = list(prediction_rows(data.texts, data.labels, clf.format(probs)))
    write_jsonl(out / "predictions.jsonl", rows)
    write_jsonl(out / "errors.jsonl", confident_errors(rows, y, probs))
    plots.per_class_png(metrics["per_class"], out / "per_class.png")
    if cfg.robustness:
        robust, flipped = multilabel_robustness(clf, data.texts, y, probs, cfg)
        write_json(out / "robustness.json", robust)
        write_jsonl(out / "flipped.jsonl", flipped)
        metrics["robustness_score"] = robust["robustness_score"]
    write_json(out / "metrics.json", metrics)
    keys = ("n", "micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "roc_auc",
            "ece", "robustness_score", "model_bytes", "texts_per_second")  # fmt: skip
    summary = {"name": name or Path(str(clf.path)).name, "model": str(clf.path), "kind": clf.kind,
               "split": cfg.split, "multi_label": True, **{k: metrics.get(k) for k in keys},
               "eval_dir": str(out)}  # fmt: skip
    write_json(out / "summary.json", summary)
    return summary
