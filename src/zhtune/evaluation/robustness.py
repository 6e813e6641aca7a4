"""Robustness: accuracy of a model on perturbed copies of the test texts.

For each perturbation: accuracy, drop from the clean accuracy, the share of predictions
that flip (perturbed prediction != clean prediction) and examples of flipped rows.
``robustness_score`` = mean over perturbations of (perturbed accuracy / clean accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from zhtune.errors import ZhtuneError
from zhtune.evaluation.perturb import DESCRIPTIONS, PERTURBATIONS, perturb

log = logging.getLogger("zhtune")


def sample_rows(n: int, max_samples: int | None, seed: int) -> list[int]:
    """Sorted indices of at most ``max_samples`` rows, the same for the same (n, seed)."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max_samples, replace=False))


def run_robustness(
    clf,
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
    names = list(perturbations or PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ZhtuneError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
    idx = sample_rows(len(texts), max_samples, seed)
    texts = [texts[i] for i in idx]
    y = np.asarray([gold[i] for i in idx])
    labels = clf.labels
    if clean_probs is None:
        clean_probs = clf.predict_proba(texts, batch_size=batch_size)
    else:
        clean_probs = np.asarray(clean_probs)[idx]
    clean_pred = clean_probs.argmax(1)
    clean_acc = float((clean_pred == y).mean()) if len(y) else 0.0
    results: dict[str, dict] = {}
    flipped: list[dict] = []
    for name in names:
        try:
            noisy = perturb(texts, name, rate, seed)
        except ZhtuneError as e:
            log.warning("robustness: skipping %s: %s", name, e)
            results[name] = {"description": DESCRIPTIONS[name], "skipped": str(e)}
            continue
        changed = [i for i, (a, b) in enumerate(zip(texts, noisy, strict=True)) if a != b]
        probs = clean_probs.copy()
        if changed:
            probs[changed] = clf.predict_proba([noisy[i] for i in changed], batch_size=batch_size)
        pred = probs.argmax(1)
        acc = float((pred == y).mean()) if len(y) else 0.0
        flips = np.nonzero(pred != clean_pred)[0]
        rows = [
            {
                "perturbation": name,
                "text": texts[i],
                "perturbed": noisy[i],
                "gold": labels[y[i]],
                "clean_pred": labels[clean_pred[i]],
                "clean_confidence": float(clean_probs[i].max()),
                "perturbed_pred": labels[pred[i]],
                "perturbed_confidence": float(probs[i].max()),
                "now_correct": bool(pred[i] == y[i]),
            }
            for i in flips
        ]
        # most confident new predictions first: the most striking flips
        rows.sort(key=lambda r: -r["perturbed_confidence"])
        flipped += rows
        results[name] = {
            "description": DESCRIPTIONS[name],
            "accuracy": acc,
            "drop": clean_acc - acc,
            "flip_rate": float(len(flips) / len(y)) if len(y) else 0.0,
            "changed_share": float(len(changed) / len(y)) if len(y) else 0.0,
            "examples": rows[:n_examples],
        }
        log.info(
            "robustness %-12s accuracy %.4f (change %+.4f), %.1f%% flipped",
            name,
            acc,
            acc - clean_acc,
            100 * results[name]["flip_rate"],
        )
    scored = [r["accuracy"] for r in results.values() if "accuracy" in r]
    summary = {
        "n": len(texts),
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
    return summary, flipped
