"""Confidence and calibration: ECE, reliability bins, temperature scaling, coverage curves.

Everything here works on a probability matrix ``probs`` (n, n_labels) and gold ids ``y``;
the confidence of a prediction is its largest probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zhtune.probs import apply_temperature, log_probs  # noqa: F401  (apply_temperature: re-exported)

# gold label ids: a list or an integer array
LabelIds = Sequence[int] | np.ndarray

N_BINS = 15
T_MIN, T_MAX = 0.05, 20.0


def confidences(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, predicted id) per row."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), probs.argmax(axis=1)


def reliability_bins(probs: np.ndarray, y: LabelIds, n_bins: int = N_BINS) -> list[dict]:
    """Equal-width confidence bins (lo, hi]: count, mean confidence and accuracy of each."""
    conf, pred = confidences(probs)
    correct = pred == np.asarray(y)
    # bin k holds confidences in (k/n, (k+1)/n]; a confidence of exactly 0 goes to bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        m = idx == k
        n = int(m.sum())
        bins.append(
            {
                "lo": k / n_bins,
                "hi": (k + 1) / n_bins,
                "count": n,
                "confidence": float(conf[m].mean()) if n else None,
                "accuracy": float(correct[m].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray, y: LabelIds, n_bins: int = N_BINS) -> float:
    """ECE = sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|."""
    total = len(y)
    if not total:
        return 0.0
    return float(
        sum(
            b["count"] / total * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(probs, y, n_bins)
            if b["count"]
        )
    )


def nll(probs: np.ndarray, y: LabelIds) -> float:
    """Mean negative log-likelihood of the gold labels."""
    p = np.clip(np.asarray(probs)[np.arange(len(y)), np.asarray(y)], 1e-12, 1.0)
    return float(-np.log(p).mean())


def fit_temperature(probs: np.ndarray, y: LabelIds, logits: np.ndarray | None = None) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, y); without
    ``logits``, log(probs) (exact up to a row constant while p is a normal float64).

    L-BFGS-B on log T with the analytic gradient, T bounded to [0.05, 20]."""
    from scipy.optimize import minimize

    logits = log_probs(probs) if logits is None else np.asarray(logits, dtype=np.float64)
    ids = np.asarray(y)
    if not len(ids):
        return 1.0
    gold = logits[np.arange(len(ids)), ids]

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = float(np.exp(x[0]))
        z = logits / t
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        p = e / s
        loss = float(np.mean(np.log(s[:, 0]) + zmax[:, 0] - gold / t))
        # d loss / d log T = mean(l_y - E_p[l]) / T
        grad = float(np.mean(gold - (p * logits).sum(axis=1)) / t)
        return loss, np.array([grad])

    res = minimize(
        f,
        x0=np.array([0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(np.log(T_MIN), np.log(T_MAX))],
    )
    return float(np.exp(res.x[0]))


def coverage_curve(probs: np.ndarray, y: LabelIds) -> dict:
    """Accuracy when answering only the most confident predictions (abstaining below a threshold).

    Points are taken at each distinct confidence (ties are kept together): ``threshold`` t,
    ``coverage`` = share of rows with confidence >= t, ``accuracy`` on those rows."""
    conf, pred = confidences(probs)
    correct = (pred == np.asarray(y)).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_s, corr_s = conf[order], correct[order]
    n = len(conf_s)
    if not n:
        return {"threshold": [], "coverage": [], "accuracy": []}
    cum = np.cumsum(corr_s)
    # last index of each run of equal confidences
    ends = np.r_[np.nonzero(np.diff(conf_s))[0], n - 1]
    return {
        "threshold": conf_s[ends].tolist(),
        "coverage": ((ends + 1) / n).tolist(),
        "accuracy": (cum[ends] / (ends + 1)).tolist(),
    }


def threshold_for_accuracy(curve: dict, target: float) -> dict:
    """The lowest threshold (largest coverage) whose accuracy reaches ``target``.

    Returns ``{"target", "threshold", "coverage", "accuracy"}``; threshold None when even the
    most confident predictions miss the target."""
    best = None
    for t, c, a in zip(curve["threshold"], curve["coverage"], curve["accuracy"], strict=True):
        if a >= target:
            best = (t, c, a)
    if best is None:
        return {"target": target, "threshold": None, "coverage": 0.0, "accuracy": None}
    return {"target": target, "threshold": best[0], "coverage": best[1], "accuracy": best[2]}


def confidence_report(
    probs: np.ndarray,
    y: LabelIds,
    dev_probs: np.ndarray | None = None,
    dev_y: LabelIds | None = None,
    *,
    target_accuracy: float = 0.95,
    n_bins: int = N_BINS,
    dev_logits: np.ndarray | None = None,
) -> dict:
    """Everything written to ``confidence.json`` except the low-confidence rows.

    The temperature is fitted on (dev_probs, dev_y) when given (on ``dev_logits`` when the
    model has them), else left at 1."""
    conf, _ = confidences(probs)
    temperature = 1.0
    if dev_probs is not None:
        if dev_y is None:
            raise TypeError("confidence_report: dev_probs given without dev_y")
        temperature = fit_temperature(dev_probs, dev_y, dev_logits)
    cal = apply_temperature(probs, temperature)
    curve = coverage_curve(probs, y)
    cal_curve = coverage_curve(cal, y)
    return {
        "n": int(len(conf)),
        "average_confidence": float(conf.mean()) if len(conf) else None,
        "share_above_0.9": float((conf > 0.9).mean()) if len(conf) else None,
        "accuracy": float((probs.argmax(1) == np.asarray(y)).mean()) if len(conf) else None,
        "n_bins": n_bins,
        "ece": expected_calibration_error(probs, y, n_bins),
        "nll": nll(probs, y),
        "temperature": temperature,
        "ece_calibrated": expected_calibration_error(cal, y, n_bins),
        "nll_calibrated": nll(cal, y),
        "average_confidence_calibrated": float(cal.max(1).mean()) if len(conf) else None,
        "reliability": reliability_bins(probs, y, n_bins),
        "reliability_calibrated": reliability_bins(cal, y, n_bins),
        "target_accuracy": target_accuracy,
        "abstain": threshold_for_accuracy(curve, target_accuracy),
        "abstain_calibrated": threshold_for_accuracy(cal_curve, target_accuracy),
        "coverage_curve": _thin(curve),
    }


def _thin(curve: dict, max_points: int = 200) -> dict:
    """At most about ``max_points`` evenly spaced points of a coverage curve."""
    n = len(curve["threshold"])
    if n <= max_points:
        return curve
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return {k: [v[i] for i in idx] for k, v in curve.items()}
