"""Likely mislabelled training rows: out-of-fold probabilities, then cleanlab.

``zhtune data ... --find-label-errors --out DIR`` checks the *training* split (dev and test
stay as they are, so a cleaned model is still scored on the same rows). Each training row
gets a probability vector from a model that did not see it: a TF-IDF (character 1-3 grams)
+ logistic-regression pipeline fitted with scikit-learn's ``cross_val_predict`` over K
stratified folds, or the probabilities of a given run (``--model RUN``; those are in-sample
when the run was trained on these rows, so they find fewer issues). ``cleanlab`` ranks the
rows (``find_label_issues``, ranked by self-confidence); ``label_issues.csv`` lists them and
``label_issues.json`` summarises. ``--drop-label-errors FILE`` on a training command leaves
the listed rows out of its training split (counted in ``data.json``).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.errors import DataError

ISSUES_FILE = "label_issues.csv"
SUMMARY_FILE = "label_issues.json"
COLUMNS = ("source", "line", "text", "given_label", "suggested_label", "score")


def out_of_fold_probs(
    texts: Sequence[str], y: np.ndarray, folds: int = 5, seed: int = 42
) -> np.ndarray:
    """(N, C) probabilities, each row from a TF-IDF model fitted on the other folds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import Pipeline

    check_folds(y, folds)
    pipe = Pipeline(
        [
            ("tfidf", TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)),
            ("clf", LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000)),
        ]
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(pipe, list(texts), y, cv=cv, method="predict_proba")


def check_folds(y: np.ndarray, folds: int) -> None:
    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}")
    if len(y) < folds:
        raise DataError(
            f"--find-label-errors needs at least as many training rows as folds: "
            f"{len(y)} rows, {folds} folds (add rows or lower --folds)"
        )
    counts = Counter(y.tolist())
    small = min(counts.values())
    if small < folds:
        raise DataError(
            f"--find-label-errors: the smallest class has {small} training rows, fewer than the "
            f"{folds} folds (add rows or lower --folds)"
        )


def find_label_errors(
    texts: Sequence[str],
    labels: Sequence[str],
    label_names: Sequence[str],
    probs: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 42,
) -> tuple[list[dict], dict]:
    """Rank likely label errors. Returns (issue rows, worst first; summary)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {n: i for i, n in enumerate(label_names)}
    y = np.array([index[x] for x in labels], dtype=np.int64)
    method = "given model (in-sample)" if probs is not None else f"TF-IDF, {folds}-fold out-of-fold"
    if probs is None:
        probs = out_of_fold_probs(texts, y, folds, seed)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(y), len(label_names)):
        raise DataError(
            f"probabilities of shape {probs.shape}, expected {(len(y), len(label_names))}"
        )
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(y, probs)
    issues = [
        {
            "index": int(i),
            "text": texts[i],
            "given_label": label_names[y[i]],
            "suggested_label": label_names[int(probs[i].argmax())],
            "score": round(float(scores[i]), 6),
        }
        for i in ranked
    ]
    summary = {
        "rows_checked": len(y),
        "rows_flagged": len(issues),
        "share_flagged": round(len(issues) / max(1, len(y)), 6),
        "flagged_by_given_label": dict(Counter(r["given_label"] for r in issues)),
        "probabilities": method,
        "out_of_fold_accuracy": round(float((probs.argmax(1) == y).mean()), 6),
        "score": "cleanlab label quality (self-confidence): lower = more likely mislabelled",
    }
    return issues, summary


def write_issues(out: Path, issues: list[dict], where: dict[str, tuple[str, int]]) -> Path:
    """``label_issues.csv``: source file and line of each flagged row, worst first."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ISSUES_FILE
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in issues:
            src, line = where.get(r["text"], ("", 0))
            w.writerow(
                [src, line or "", r["text"], r["given_label"], r["suggested_label"], r["score"]]
            )
    return path


def read_flagged(path: str | Path) -> set[tuple[str, str]]:
    """(text, given label) pairs listed in a ``label_issues.csv``."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found (write it with `zhtune data --find-label-errors`)", str(p))
    with p.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"text", "given_label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"not a label_issues.csv: no column(s) {', '.join(sorted(missing))}", str(p), 1
            )
        return {(row["text"], row["given_label"]) for row in reader}


def drop_flagged(texts: list[str], labels: list[str], path: str | Path) -> tuple[list[int], int]:
    """Indices of the rows to keep, and how many listed rows were dropped."""
    flagged = read_flagged(path)
    keep = [
        i for i, (t, lab) in enumerate(zip(texts, labels, strict=True)) if (t, lab) not in flagged
    ]
    return keep, len(texts) - len(keep)


def source_lines(rows: Sequence[Any]) -> dict[str, tuple[str, int]]:
    """text -> (source file, line) of its first occurrence among the raw rows."""
    out: dict[str, tuple[str, int]] = {}
    for r in rows:
        out.setdefault(r.text, (r.source, r.line))
    return out


def run_find_label_errors(
    cfg: Any, out: str | Path, predict_proba: Any = None, folds: int = 5
) -> dict:
    """Check the training split of ``cfg``; write label_issues.csv/.json into ``out``.

    ``predict_proba`` = ``(fn(texts) -> (N, C), the model's label names)`` replaces the
    cross-validated TF-IDF model (``--model RUN``)."""
    import dataclasses

    from zhtune.data.readers import BadRows
    from zhtune.data.splits import _read_sources, load_splits
    from zhtune.runs import write_json

    cfg = dataclasses.replace(cfg, drop_label_errors=None)
    splits = load_splits(cfg)
    train, names = splits.train, list(splits.label_map.names)
    probs = None
    if predict_proba is not None:
        fn, model_labels = predict_proba
        if sorted(model_labels) != sorted(names):
            raise DataError(
                f"--model predicts {', '.join(model_labels)} but the data has {', '.join(names)}"
            )
        probs = np.asarray(fn(train.texts))[:, [list(model_labels).index(n) for n in names]]
    else:
        check_folds(np.array(train.label_ids(splits.label_map)), folds)
    issues, summary = find_label_errors(train.texts, train.labels, names, probs, folds, cfg.seed)
    parts, _, _ = _read_sources(cfg, BadRows("skip"))
    out = Path(out)
    csv_path = write_issues(out, issues, source_lines(parts["train"]))
    summary = {
        **summary,
        "split": "train (dev and test rows are not checked and never dropped)",
        "labels": names,
        "issues_file": str(csv_path),
        "use": f"--drop-label-errors {csv_path} on baseline/finetune/lora to train without them",
        "worst": [
            {k: r[k] for k in ("text", "given_label", "suggested_label", "score")}
            for r in issues[:10]
        ],
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary
