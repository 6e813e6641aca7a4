"""``zhtune ensemble``: combine the probabilities of several run directories (kind ``ensemble``).

Members are any run directories ``Classifier.load`` reads (baseline, encoder, LoRA head,
label scoring, ONNX, another ensemble); they must share one label list. The ensemble run
directory **references its members by absolute path** (nothing is copied or linked): moving
or deleting a member breaks the ensemble, which then fails to load naming the missing path.

Methods (fitted on the dev split of the data config; nothing is fitted for ``mean``):

- ``mean``: the plain average of the members' probabilities;
- ``weighted`` (default): ``sum_m w_m P_m`` with ``w`` on the simplex (``w >= 0``,
  ``sum w = 1``) minimising the dev log-loss (``scipy.optimize.minimize``, SLSQP); a member
  whose weight comes out 0 is not run at prediction time;
- ``stack``: a scikit-learn ``LogisticRegression`` (no intercept) on the members'
  concatenated dev log-probabilities, centred per row (their logits); for two labels and
  one member (or identical members) it is a temperature on that member, so the predicted
  labels are the member's.

Stored without pickle: ``ensemble.json`` (method, members, weights) and
``ensemble.safetensors`` (``weights``; for ``stack`` also ``coef`` and ``intercept``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.config import (
    add_config_args,
    arg,
    check,
    config_from_args,
    save_config,
    validate_choices,
)
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ModelLoadError, ZhtuneError
from zhtune.probs import EPS, log_probs, softmax
from zhtune.runs import prepare_out_dir, read_manifest, write_json, write_manifest

log = logging.getLogger("zhtune")

META_FILE = "ensemble.json"
WEIGHTS_FILE = "ensemble.safetensors"
METHODS = ("mean", "weighted", "stack")
ZERO_WEIGHT = 1e-9  # weights below this are 0: the member is skipped at prediction time


@dataclass
class EnsembleConfig(DataConfig):
    """Combine several runs' probabilities; weights are fitted on the dev split."""

    method: str = arg("weighted", "how members are combined", METHODS)
    stack_C: float = arg(1.0, "stack: inverse L2 strength of the logistic regression")
    batch_size: int = arg(64, "texts per prediction batch for every member")

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        check(self.stack_C > 0, "stack_C", f"must be > 0, got {self.stack_C}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


# --- fitting -----------------------------------------------------------------------------
def fit_simplex_weights(member_probs: Sequence[np.ndarray], gold: Sequence[int]) -> np.ndarray:
    """Weights ``w >= 0``, ``sum w = 1`` minimising ``-mean log sum_m w_m P_m[i, y_i]``."""
    from scipy.optimize import minimize

    m = len(member_probs)
    y = np.asarray(gold)
    p_true = np.stack([np.asarray(p)[np.arange(len(y)), y] for p in member_probs], 1)  # (N, M)

    def loss(w: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(p_true @ w, EPS, None))))

    def grad(w: np.ndarray) -> np.ndarray:
        return -np.mean(p_true / np.clip(p_true @ w, EPS, None)[:, None], axis=0)

    res = minimize(
        loss,
        np.full(m, 1.0 / m),
        jac=grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.where(res.x > ZERO_WEIGHT, res.x, 0.0)
    return w / w.sum()


def stack_features(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Each member's log-probabilities centred per row (its logits up to a constant)."""
    feats = [log_probs(p) - log_probs(p).mean(axis=1, keepdims=True) for p in member_probs]
    return np.concatenate(feats, axis=1)


def fit_stack(
    member_probs: Sequence[np.ndarray], gold: Sequence[int], n_labels: int, C: float
) -> tuple[np.ndarray, np.ndarray]:
    """(coef (K or 1, M*K), intercept) of a LogisticRegression on the members' log-probs."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(gold)
    if len(set(y.tolist())) < 2:
        raise ZhtuneError("ensemble --method stack: the dev split has a single label")
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=5000)
    clf.fit(stack_features(member_probs), y)
    coef = np.asarray(clf.coef_, dtype=np.float64)
    if len(clf.classes_) != n_labels and coef.shape[0] != 1:
        full = np.zeros((n_labels, coef.shape[1]))
        full[clf.classes_] = coef  # labels missing from dev get no score of their own
        coef = full
    return coef, np.zeros(coef.shape[0])


def combine(
    member_probs: Sequence[np.ndarray], method: str, weights: np.ndarray, coef=None, intercept=None
) -> np.ndarray:
    if method == "stack":
        z = stack_features(member_probs) @ np.asarray(coef).T + np.asarray(intercept)
        if z.shape[1] == 1:  # binary logistic regression: one logit for label 1
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        return softmax(z)
    out = sum(
        w * np.asarray(p, dtype=np.float64) for w, p in zip(weights, member_probs, strict=True)
    )
    return np.asarray(out) / np.asarray(out).sum(axis=1, keepdims=True)


# --- the backend -------------------------------------------------------------------------
class EnsembleBackend:
    """``predict_proba`` runs every member on the whole batch, then combines."""

    def __init__(self, members: list[Any], labels: list[str], method: str, weights: np.ndarray,
                 coef: np.ndarray | None = None, intercept: np.ndarray | None = None) -> None:  # fmt: skip
        self.members, self.labels, self.method = members, list(labels), method
        self.weights, self.coef, self.intercept = np.asarray(weights), coef, intercept

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if self.method == "stack":
            probs = [m.predict_proba(list(texts), batch_size=batch_size) for m in self.members]
            return combine(probs, self.method, self.weights, self.coef, self.intercept)
        # a member with weight 0 changes nothing: it is not run at all
        used = [i for i, w in enumerate(self.weights) if w > ZERO_WEIGHT]
        probs = [self.members[i].predict_proba(list(texts), batch_size=batch_size) for i in used]
        return combine(probs, self.method, self.weights[used])

    def save(self, out: Path, member_paths: list[str], kinds: list[str]) -> None:
        from safetensors.numpy import save_file

        arrays = {"weights": self.weights}
        if self.method == "stack":
            arrays.update(coef=np.asarray(self.coef), intercept=np.asarray(self.intercept))
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
                  str(out / WEIGHTS_FILE))  # fmt: skip
        meta = {"format": 1, "method": self.method, "members": member_paths, "member_kinds": kinds,
                "weights": self.weights.tolist(), "references": "absolute paths; not copied"}  # fmt: skip
        write_json(out / META_FILE, meta)


def load_backend(path: Path, manifest: dict, **kw: Any) -> EnsembleBackend:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from zhtune.classifier import Classifier

    path = Path(path)
    try:
        arrays = load_file(str(path / WEIGHTS_FILE))
    except (OSError, SafetensorError) as e:
        raise ModelLoadError(
            f"{path / WEIGHTS_FILE}: cannot read the ensemble weights ({e})"
        ) from None
    members_paths = list(manifest.get("members") or [])
    for m in members_paths:
        if not Path(m).is_dir():
            raise ModelLoadError(f"{path}: member {m} is missing (members are referenced by path)")
    members = [Classifier.load(m, **kw) for m in members_paths]
    labels = list(manifest["labels"])
    for m, clf in zip(members_paths, members, strict=True):
        if clf.labels != labels:
            raise ModelLoadError(f"{path}: member {m} now has labels {clf.labels}, not {labels}")
    return EnsembleBackend(members, labels, manifest.get("method", "weighted"), arrays["weights"],
                           arrays.get("coef"), arrays.get("intercept"))  # fmt: skip


# --- the command -------------------------------------------------------------------------
def check_members(paths: Sequence[str | Path]) -> tuple[list[str], list[str], list[str]]:
    """(absolute paths, kinds, labels); one-line errors for bad members or label sets."""
    if len(paths) < 2:
        raise ZhtuneError(f"an ensemble needs at least two member runs, got {len(paths)}: "
                          f"{', '.join(map(str, paths)) or 'none'}")  # fmt: skip
    found: dict[str, tuple[str, list[str]]] = {}
    for p in paths:
        d = Path(p).expanduser().resolve()
        manifest = read_manifest(d) if d.is_dir() else None
        if manifest is None:
            raise ZhtuneError(f"{p}: not a zhtune run directory (no zhtune.json); members must be "
                              "run directories written by zhtune")  # fmt: skip
        if str(d) in found:
            raise ZhtuneError(f"{p}: given twice as a member")
        found[str(d)] = (manifest["kind"], list(manifest.get("labels") or []))
    if len({tuple(lbl) for _, lbl in found.values()}) > 1:
        detail = "; ".join(f"{p}: {', '.join(lbl)}" for p, (_, lbl) in found.items())
        raise ZhtuneError(f"ensemble members have different label sets ({detail})")
    first = next(iter(found.values()))
    return list(found), [k for k, _ in found.values()], first[1]


def _members_total(paths: list[str], key: str) -> int:
    """Sum of ``key`` (``parameters``, ``model_bytes``) over the members' metrics.json."""
    from zhtune.evaluation.evaluate import count_parameters
    from zhtune.evaluation.scoring import dir_size

    if key == "parameters":
        return sum(count_parameters(p) or 0 for p in paths)
    return sum(dir_size(p) for p in paths)


def _member_name(path: str) -> str:
    return Path(path).name or path


def run_ensemble(cfg: EnsembleConfig, members: Sequence[str | Path], out: str | Path) -> dict:
    """Fit the combination on dev, score test, write the run directory; returns test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.evaluation.scoring import check_labels, write_test_outputs

    paths, kinds, labels = check_members(members)
    out = prepare_out_dir(out)
    save_config(cfg, out)
    splits = load_splits(cfg)
    write_json(out / "data.json", splits.report)
    check_labels(labels, list(splits.label_map.names), "ensemble")
    clfs = [Classifier.load(p) for p in paths]
    dev_y = splits.dev.label_ids(splits.label_map)
    test_y = np.asarray(splits.test.label_ids(splits.label_map))
    dev_p = [c.predict_proba(splits.dev.texts, cfg.batch_size) for c in clfs]
    weights = np.full(len(clfs), 1.0 / len(clfs))
    coef = intercept = None
    if cfg.method == "weighted":
        weights = fit_simplex_weights(dev_p, dev_y)
    elif cfg.method == "stack":
        coef, intercept = fit_stack(dev_p, dev_y, len(labels), cfg.stack_C)
    backend = EnsembleBackend(clfs, labels, cfg.method, weights, coef, intercept)
    backend.save(out, paths, kinds)
    write_manifest(out, "ensemble", labels, method=cfg.method, members=paths, member_kinds=kinds)
    per_member = []
    for p, k, c, dp, w in zip(paths, kinds, clfs, dev_p, weights, strict=True):
        tp = c.predict_proba(splits.test.texts, cfg.batch_size)
        per_member.append({"name": _member_name(p), "path": p, "kind": k,
                           "weight": None if cfg.method == "stack" else float(w),
                           "dev_accuracy": float(np.mean(dp.argmax(1) == np.asarray(dev_y))),
                           "test_accuracy": float(np.mean(tp.argmax(1) == test_y))})  # fmt: skip
    dev_acc = float(np.mean(backend.predict_proba(splits.dev.texts, cfg.batch_size).argmax(1)
                            == np.asarray(dev_y)))  # fmt: skip
    clf = Classifier(backend, "ensemble", str(out))
    extra = {
        "model": f"ensemble-{cfg.method}:" + "+".join(_member_name(p) for p in paths),
        "method": cfg.method,
        "dev_accuracy": dev_acc,
        "members": per_member,
        # the members' parameters and weight files count: they all run at prediction time
        "parameters": _members_total(paths, "parameters") + int(weights.size),
        "model_bytes": _members_total(paths, "model_bytes"),
    }
    metrics = write_test_outputs(clf, splits, out, extra=extra, batch_size=cfg.batch_size)
    write_json(out / "members.json", per_member)
    return metrics


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="member run directories (two or more)")
    p.add_argument("--out", required=True, help="ensemble run directory to write")
    add_config_args(p, EnsembleConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.evaluate import data_from_model
    from zhtune.evaluation.metrics import format_table, print_run_summary

    check_members(ns.runs)  # before reading a member's data settings
    # no data flags: the first member's own split settings (its config.yaml)
    cfg: Any = data_from_model(config_from_args(EnsembleConfig, ns), ns.runs[0])  # type: ignore[arg-type]
    m = run_ensemble(cfg, ns.runs, ns.out)
    print(format_table(m["members"], [("name", "member"), ("kind", "kind"), ("weight", "weight"),
                                      ("dev_accuracy", "dev acc"), ("test_accuracy", "test acc")]))  # fmt: skip
    print()
    print_run_summary(m, ns.out)
    return 0
