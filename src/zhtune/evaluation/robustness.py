"""Robustness: accuracy of a model on perturbed copies of the test texts.

For each perturbation: accuracy, drop from the clean accuracy, the share of predictions
that flip (perturbed prediction != clean prediction) and examples of flipped rows.
``robustness_score`` = mean over perturbations of (perturbed accuracy / clean accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zhtune.errors import ZhtuneError
from zhtune.evaluation.perturb import DESCRIPTIONS, PERTURBATIONS, perturb

if TYPE_CHECKING:
    from zhtune.classifier import Classifier

log = logging.getLogger("zhtune")


def sample_rows(n: int, max_samples: int | None, seed: int) -> list[int]:
    """Sorted indices of at most ``max_samples`` rows, the same for the same (n, seed)."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max_samples, replace=False))


@dataclass
class _Clean:
    """The sampled rows and the model's predictions on their unperturbed texts."""

    texts: list[str]
    y: np.ndarray
    labels: list[str]
    probs: np.ndarray
    pred: np.ndarray
    accuracy: float


def _check_names(perturbations: Sequence[str] | None) -> list[str]:
    """The perturbations to run (default all); unknown names raise ZhtuneError."""
    names = list(perturbations or PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ZhtuneError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
    return names


def _clean_run(
    clf: Classifier,
    idx: list[int],
    texts: Sequence[str],
    gold: Sequence[int],
    *,
    batch_size: int,
    clean_probs: np.ndarray | None,
) -> _Clean:
    """Rows ``idx`` of (texts, gold) and their clean predictions (reused when given)."""
    sample = [texts[i] for i in idx]
    y = np.asarray([gold[i] for i in idx])
    labels = clf.labels
    if clean_probs is None:
        probs = clf.predict_proba(sample, batch_size=batch_size)
    else:
        probs = np.asarray(clean_probs)[idx]
    pred = probs.argmax(1)
    acc = float((pred == y).mean()) if len(y) else 0.0
    return _Clean(sample, y, labels, probs, pred, acc)


def _flipped_rows(
    clean: _Clean, name: str, noisy: list[str], probs: np.ndarray, pred: np.ndarray
) -> list[dict]:
    """The rows whose prediction ``name`` flipped, most confident new predictions first."""
    labels, y = clean.labels, clean.y
    flips = np.nonzero(pred != clean.pred)[0]
    rows = [
        {
            "perturbation": name,
            "text": clean.texts[i],
            "perturbed": noisy[i],
            "gold": labels[y[i]],
            "clean_pred": labels[clean.pred[i]],
            "clean_confidence": float(clean.probs[i].max()),
            "perturbed_pred": labels[pred[i]],
            "perturbed_confidence": float(probs[i].max()),
            "now_correct": bool(pred[i] == y[i]),
        }
        for i in flips
    ]
    # most confident new predictions first: the most striking flips
    rows.sort(key=lambda r: -r["perturbed_confidence"])
    return rows


def _score_perturbation(
    clf: Classifier,
    clean: _Clean,
    name: str,
    noisy: list[str],
    *,
    batch_size: int,
    n_examples: int,
) -> tuple[dict, list[dict]]:
    """(result for ``robustness.json``, flipped rows) of one perturbation's texts ``noisy``.

    Only the texts the perturbation changed are predicted again."""
    texts, y = clean.texts, clean.y
    changed = [i for i, (a, b) in enumerate(zip(texts, noisy, strict=True)) if a != b]
    probs = clean.probs.copy()
    if changed:
        probs[changed] = clf.predict_proba([noisy[i] for i in changed], batch_size=batch_size)
    pred = probs.argmax(1)
    acc = float((pred == y).mean()) if len(y) else 0.0
    rows = _flipped_rows(clean, name, noisy, probs, pred)
    flip_rate = float(len(rows) / len(y)) if len(y) else 0.0
    result = {
        "description": DESCRIPTIONS[name],
        "accuracy": acc,
        "drop": clean.accuracy - acc,
        "flip_rate": flip_rate,
        "changed_share": float(len(changed) / len(y)) if len(y) else 0.0,
        "examples": rows[:n_examples],
    }
    log.info(
        "robustness %-12s accuracy %.4f (change %+.4f), %.1f%% flipped",
        name,
        acc,
        acc - clean.accuracy,
        100 * flip_rate,
    )
    return result, rows


def _summary(results: dict[str, dict], clean: _Clean, rate: float, seed: int) -> dict:
    """The ``robustness.json`` summary: clean accuracy, means over the scored perturbations."""
    scored = [r["accuracy"] for r in results.values() if "accuracy" in r]
    clean_acc = clean.accuracy
    return {
        "n": len(clean.texts),
        "rate": rate,
        "seed": seed,
        "clean_accuracy": clean_acc,
        "mean_accuracy": float(np.mean(scored)) if scored else None,
        "robustness_score": (float(np.mean(scored)) / clean_acc if scored and clean_acc else None),
        "mean_flip_rate": (
            float(np.mean([r["flip_rate"] for r in results.values() if "flip_rate" in r]))
            if scored
            else None
        ),
        "perturbations": results,
    }


def run_robustness(
    clf: Classifier,
    texts: Sequence[str],
    gold: Sequence[int],
    *,
    rate: float = 0.1,
    seed: int = 42,
    max_samples: int | None = 500,
    perturbations: Sequence[str] | None = None,
    batch_size: int = 64,
    n_examples: int = 5,
    clean_probs: np.ndarray | None = None,
) -> tuple[dict, list[dict]]:
    """Score ``clf`` on every perturbation of (a seeded sample of) ``texts``.

    Returns (summary for ``robustness.json``, every flipped row). Only the texts a
    perturbation changes are predicted again. A perturbation whose resource is missing is
    reported as skipped rather than failing the evaluation."""
    names = _check_names(perturbations)
    idx = sample_rows(len(texts), max_samples, seed)
    clean = _clean_run(clf, idx, texts, gold, batch_size=batch_size, clean_probs=clean_probs)
    results: dict[str, dict] = {}
    flipped: list[dict] = []
    for name in names:
        try:
            noisy = perturb(clean.texts, name, rate, seed)
        except ZhtuneError as e:
            log.warning("robustness: skipping %s: %s", name, e)
            results[name] = {"description": DESCRIPTIONS[name], "skipped": str(e)}
            continue
        results[name], rows = _score_perturbation(
            clf, clean, name, noisy, batch_size=batch_size, n_examples=n_examples
        )
        flipped += rows
    return _summary(results, clean, rate, seed), flipped
