"""``zhtune evaluate``: metrics, confidence and calibration, robustness of any model.

Works for every model kind through :meth:`zhtune.Classifier.load`. Writes into ``--out``:

- ``metrics.json``, ``predictions.jsonl``, ``errors.jsonl`` (misclassified rows, most
  confident first), ``confusion_matrix.png``, ``per_class.png``;
- ``confidence.json`` (average confidence, ECE before/after temperature scaling, reliability
  bins, abstention threshold for ``--target-accuracy``, low-confidence rows),
  ``calibration.json`` (the temperature fitted on the dev split), ``confidence_hist.png``,
  ``reliability.png``, ``coverage.png``;
- ``robustness.json``, ``robustness.png``, ``flipped.jsonl`` (unless ``--no-robustness``);
- ``explanations.jsonl``: word attributions of the ``--explain-errors`` (5) most confident
  errors (integrated gradients where the model allows it, else word occlusion);
- ``summary.json`` (the headline row) and ``report.html`` (one self-contained page).
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zhtune.config import (
    add_config_args,
    arg,
    check,
    config_from_args,
    save_config,
    validate_choices,
)
from zhtune.data import DataConfig, Split, Splits, load_splits
from zhtune.errors import ZhtuneError
from zhtune.evaluation.calibration import confidence_report
from zhtune.evaluation.explain import METHODS
from zhtune.evaluation.metrics import format_table
from zhtune.evaluation.perturb import PERTURBATIONS
from zhtune.evaluation.scoring import dir_size, score
from zhtune.runs import prediction_rows, prepare_out_dir, write_json, write_jsonl

if TYPE_CHECKING:
    from zhtune.classifier import Classifier

log = logging.getLogger("zhtune")

SUMMARY_COLUMNS = [
    ("name", "model"),
    ("kind", "kind"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("ece", "ECE"),
    ("ece_calibrated", "ECE (T-scaled)"),
    ("robustness_score", "robustness"),
    ("parameters", "parameters"),
    ("model_bytes", "size (bytes)"),
    ("texts_per_second", "texts/s"),
]


@dataclass
class EvaluateConfig(DataConfig):
    """How a model is evaluated (the data fields select the rows, as in training)."""

    split: str = arg("test", "split to evaluate", ("train", "dev", "test"))
    batch_size: int = arg(64, "texts per prediction batch")
    target_accuracy: float = arg(
        0.95, "accuracy the abstention threshold must reach on the answered rows"
    )
    n_bins: int = arg(15, "equal-width confidence bins for ECE and the reliability diagram")
    n_low_confidence: int = arg(20, "how many of the least confident rows to list")
    robustness: bool = arg(True, "run the robustness perturbations (--no-robustness turns off)")
    robustness_rate: float = arg(
        0.1, "share of characters/words a perturbation changes (at least one per text)"
    )
    max_robustness_samples: int | None = arg(
        500, "perturb at most this many test rows (seeded sample)"
    )
    perturbations: list[str] | None = arg(
        None, f"perturbations to run (default all): {','.join(PERTURBATIONS)}"
    )
    explain_errors: int = arg(
        5, "explain this many of the most confident errors in report.html (0: none)"
    )
    explain_method: str = arg(
        "auto", "how: integrated gradients where possible (auto), or word occlusion", METHODS
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(
            0 < self.target_accuracy <= 1,
            "target_accuracy",
            f"must be in (0, 1], got {self.target_accuracy}",
        )
        check(self.n_bins >= 2, "n_bins", f"must be >= 2, got {self.n_bins}")
        check(
            0 < self.robustness_rate <= 1,
            "robustness_rate",
            f"must be in (0, 1], got {self.robustness_rate}",
        )
        m = self.max_robustness_samples
        check(m is None or m > 0, "max_robustness_samples", f"must be > 0, got {m}")
        bad = [p for p in self.perturbations or [] if p not in PERTURBATIONS]
        check(not bad, "perturbations", f"unknown {bad}; known: {', '.join(PERTURBATIONS)}")
        check(
            self.explain_errors >= 0, "explain_errors", f"must be >= 0, got {self.explain_errors}"
        )


def data_fields(cfg: DataConfig) -> dict:
    """The DataConfig fields of any config (to build another command's config on the same rows)."""
    return {k: getattr(cfg, k) for k in DataConfig.__dataclass_fields__}


def count_parameters(path: str | Path) -> int | None:
    """Parameters of a model directory: ``parameters`` from its metrics.json when the trainer
    wrote it, else the sum of the tensor sizes in its top-level safetensors headers."""
    p = Path(path)
    if not p.is_dir():
        return None
    m = p / "metrics.json"
    if m.is_file():
        try:
            n = json.loads(m.read_text(encoding="utf-8")).get("parameters")
            if isinstance(n, int):
                return n
        except ValueError:
            pass
    total, found = 0, False
    for f in sorted(p.glob("*.safetensors")):
        try:
            with f.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for name, info in header.items():
            if name != "__metadata__":
                total += int(np.prod(info.get("shape", []), dtype=np.int64))
                found = True
    return total if found else None


def save_temperature(model_dir: str | Path, calibration: dict) -> Path:
    """Write ``calibration.json`` into a model directory (read by ``Classifier.load(calibrated=True)``)."""
    p = Path(model_dir)
    if not p.is_dir():
        raise ZhtuneError(
            f"--save-temperature needs a local model directory; {model_dir} is not one"
        )
    try:
        write_json(p / "calibration.json", calibration)
    except OSError as e:
        raise ZhtuneError(f"cannot write {p / 'calibration.json'}: {e.strerror or e}") from None
    return p / "calibration.json"


@dataclass
class _Scored:
    """One model scored on the evaluated split: what every later step reads."""

    clf: Classifier
    name: str
    data: Split
    labels: list[str]
    probs: np.ndarray
    gold: np.ndarray
    metrics: dict
    rows: list[dict]


def _load_inputs(
    model: str | Path | Classifier, cfg: EvaluateConfig, out: Path, splits: Splits | None
) -> tuple[Splits, Classifier]:
    """The data (loaded from ``cfg`` when not given, with ``data.json``) and the model."""
    from zhtune.classifier import Classifier

    if splits is None:
        splits = load_splits(cfg)
        write_json(out / "data.json", splits.report)  # sizes, skipped rows, warnings
        for w in splits.report["warnings"]:
            log.warning(w)
    clf = model if isinstance(model, Classifier) else Classifier.load(model)
    return splits, clf


def _score_split(clf: Classifier, splits: Splits, cfg: EvaluateConfig, name: str | None) -> _Scored:
    """Score ``clf`` on ``cfg.split``: metrics (with model size and parameters) and rows."""
    labels = list(splits.label_map.names)
    model_path = clf.path
    name = name or Path(str(model_path)).name or str(model_path)
    data = splits.get(cfg.split)
    log.info("evaluate %s (%s) on %d %s rows", model_path, clf.kind, len(data), cfg.split)
    metrics, probs = score(clf, data, labels, cfg.batch_size)
    gold = np.asarray(data.label_ids(splits.label_map))
    metrics = {
        "split": cfg.split,
        "model": str(model_path),
        "kind": clf.kind,
        **metrics,
        "model_bytes": dir_size(model_path) if Path(str(model_path)).is_dir() else None,
        "parameters": count_parameters(model_path),
    }
    rows = list(prediction_rows(data.texts, data.labels, clf.format(probs)))
    for i, r in enumerate(rows):
        r["index"] = i
    return _Scored(clf, name, data, labels, probs, gold, metrics, rows)


def _write_predictions(ev: _Scored, out: Path) -> None:
    """``predictions.jsonl``, ``errors.jsonl`` (most confident first) and the metric PNGs."""
    from zhtune import plots

    write_jsonl(out / "predictions.jsonl", ev.rows)
    errors = sorted(
        (r for r in ev.rows if r["label"] != r["gold"]),
        key=lambda r: (-r["confidence"], r["index"]),
    )
    write_jsonl(out / "errors.jsonl", errors)
    plots.confusion_matrix_png(
        ev.metrics["confusion_matrix"], ev.labels, out / "confusion_matrix.png"
    )
    plots.per_class_png(ev.metrics["per_class"], out / "per_class.png")


def _calibrate(
    ev: _Scored, splits: Splits, cfg: EvaluateConfig, out: Path, *, save_to_model: bool
) -> dict:
    """Confidence report with a temperature fitted on dev: ``confidence.json``,
    ``calibration.json`` (and into the model directory when ``save_to_model``)."""
    fit_split = "dev"
    from zhtune.probs import softmax

    dev_logits = ev.clf.predict_logits(splits.dev.texts, batch_size=cfg.batch_size)
    dev_probs = softmax(dev_logits)  # the temperature is fitted on the logits themselves
    dev_gold = splits.dev.label_ids(splits.label_map)
    conf = confidence_report(
        ev.probs,
        ev.gold,
        dev_probs,
        dev_gold,
        target_accuracy=cfg.target_accuracy,
        n_bins=cfg.n_bins,
        dev_logits=dev_logits,
    )
    conf["fit_split"] = fit_split
    if cfg.split == fit_split:
        log.warning(
            "the temperature is fitted on the evaluated split (dev): ECE after is optimistic"
        )
    order = np.argsort(ev.probs.max(1), kind="stable")[: cfg.n_low_confidence]
    conf["low_confidence"] = [
        {k: ev.rows[i][k] for k in ("index", "text", "gold", "label", "confidence")} for i in order
    ]
    write_json(out / "confidence.json", conf)
    calibration = {
        "temperature": conf["temperature"],
        "fit_split": fit_split,
        "n_fit": len(dev_gold),
        "ece_before": conf["ece"],
        "ece_after": conf["ece_calibrated"],
        "nll_before": conf["nll"],
        "nll_after": conf["nll_calibrated"],
        "evaluated_split": cfg.split,
        "model": str(ev.clf.path),
    }
    write_json(out / "calibration.json", calibration)
    if save_to_model:
        path = save_temperature(ev.clf.path, calibration)
        log.info("temperature %.4f saved to %s", conf["temperature"], path)
    return conf


def _confidence_plots(ev: _Scored, conf: dict, cfg: EvaluateConfig, out: Path) -> None:
    """``confidence_hist.png``, ``reliability.png`` and ``coverage.png``."""
    from zhtune import plots

    conf_max = ev.probs.max(1)
    plots.confidence_histogram_png(
        conf_max, ev.probs.argmax(1) == ev.gold, out / "confidence_hist.png"
    )
    plots.reliability_diagram_png(
        {
            "原始 uncalibrated": (conf["reliability"], conf["ece"]),
            f"温度缩放 T={conf['temperature']:.2f}": (
                conf["reliability_calibrated"],
                conf["ece_calibrated"],
            ),
        },
        out / "reliability.png",
    )
    curve = conf["coverage_curve"]
    plots.coverage_curve_png(
        curve["coverage"],
        curve["accuracy"],
        out / "coverage.png",
        target=cfg.target_accuracy,
        at_target=conf["abstain"],
    )


def _robustness(ev: _Scored, cfg: EvaluateConfig, out: Path) -> dict | None:
    """Run the perturbations (unless turned off): ``robustness.json``, ``flipped.jsonl``,
    ``robustness.png``; returns the robustness summary or None."""
    if not cfg.robustness:
        return None
    from zhtune import plots
    from zhtune.evaluation.robustness import run_robustness

    robust, flipped = run_robustness(
        ev.clf,
        ev.data.texts,
        list(ev.gold),
        rate=cfg.robustness_rate,
        seed=cfg.seed,
        max_samples=cfg.max_robustness_samples,
        perturbations=cfg.perturbations,
        batch_size=cfg.batch_size,
        clean_probs=ev.probs,
    )
    write_json(out / "robustness.json", robust)
    write_jsonl(out / "flipped.jsonl", flipped)
    plots.robustness_png(robust, out / "robustness.png")
    return robust


def _write_summary(
    ev: _Scored, conf: dict, robust: dict | None, cfg: EvaluateConfig, out: Path
) -> dict:
    """Complete and write ``metrics.json``; build and write the headline ``summary.json``."""
    metrics = ev.metrics
    metrics["ece"] = conf["ece"]
    metrics["ece_calibrated"] = conf["ece_calibrated"]
    metrics["temperature"] = conf["temperature"]
    if robust is not None:
        metrics["robustness_score"] = robust["robustness_score"]
    write_json(out / "metrics.json", metrics)
    summary = {
        "name": ev.name,
        "model": str(ev.clf.path),
        "kind": ev.clf.kind,
        "split": cfg.split,
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "weighted_f1": metrics["weighted_f1"],
        "roc_auc": metrics["roc_auc"],
        "log_loss": metrics["log_loss"],
        "ece": conf["ece"],
        "ece_calibrated": conf["ece_calibrated"],
        "temperature": conf["temperature"],
        "abstain_threshold": conf["abstain"]["threshold"],
        "abstain_coverage": conf["abstain"]["coverage"],
        "robustness_score": robust["robustness_score"] if robust else None,
        "mean_flip_rate": robust["mean_flip_rate"] if robust else None,
        "parameters": metrics["parameters"],
        "model_bytes": metrics["model_bytes"],
        "texts_per_second": metrics["texts_per_second"],
        "eval_dir": str(out),
    }
    write_json(out / "summary.json", summary)
    return summary


def evaluate_model(
    model: str | Path | Classifier,
    cfg: EvaluateConfig,
    out: str | Path,
    *,
    splits: Splits | None = None,
    save_temperature_to_model: bool = False,
    name: str | None = None,
    report: bool = True,
) -> dict:
    """Evaluate ``model`` (a path/hub id or a loaded Classifier) and write ``out``.

    Returns the headline row (also written to ``summary.json``), with ``eval_dir``."""
    out = prepare_out_dir(out)
    save_config(cfg, out)
    splits, clf = _load_inputs(model, cfg, out, splits)
    if clf.multi_label or splits.multi_label:
        from zhtune.evaluation.multilabel_eval import evaluate_multilabel

        summary = evaluate_multilabel(clf, splits, cfg, out, name)
    else:
        ev = _score_split(clf, splits, cfg, name)
        _write_predictions(ev, out)
        conf = _calibrate(ev, splits, cfg, out, save_to_model=save_temperature_to_model)
        _confidence_plots(ev, conf, cfg, out)
        robust = _robustness(ev, cfg, out)
        summary = _write_summary(ev, conf, robust, cfg, out)
    _explain_errors(clf, cfg, out)
    if report:
        from zhtune.evaluation.report import build_report

        build_report([summary], out, title=f"zhtune evaluate: {summary['name']}")
    return summary


EXPLAIN_STEPS = 20  # integrated-gradients steps for the report (the CLI's default is 50)
EXPLAIN_MAX_UNITS = 256  # occlusion: skip error rows with more words (one pass per word)


def _explain_errors(clf: Classifier, cfg: EvaluateConfig, out: Path) -> None:
    """``explanations.jsonl``: word attributions of the ``cfg.explain_errors`` most
    confident errors (shown in report.html)."""
    if not cfg.explain_errors:
        return
    from zhtune.evaluation.explain import error_explanations

    rows = error_explanations(
        clf,
        out / "errors.jsonl",
        cfg.explain_errors,
        cfg.explain_method,
        steps=EXPLAIN_STEPS,
        max_units=EXPLAIN_MAX_UNITS,
    )
    write_jsonl(out / "explanations.jsonl", rows)


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``zhtune evaluate``."""
    p.add_argument("--model", required=True, help="run directory, model directory or HF hub id")
    p.add_argument("--out", required=True, help="directory for the evaluation outputs")
    p.add_argument(
        "--save-temperature",
        action="store_true",
        help="also write calibration.json (the fitted temperature) into the model directory, "
        "so that `Classifier.load(model, calibrated=True)` / `predict --calibrated` use it",
    )
    p.add_argument("--no-robustness", action="store_true", help="skip the robustness perturbations")
    from zhtune.classifier import add_load_args

    add_load_args(p)
    from zhtune.device import add_device_arg

    add_device_arg(p)
    add_config_args(p, EvaluateConfig)


def data_from_model(cfg: EvaluateConfig, model: str | Path) -> EvaluateConfig:
    """Without a data source, take the data fields from the model's ``config.yaml``."""
    if cfg.source_given():
        return cfg
    saved = Path(model) / "config.yaml"
    if not saved.is_file():
        raise ZhtuneError(
            "give the data to evaluate on (--dataset, --train or --data-dir); "
            f"{model} has no config.yaml to take it from"
        )
    import yaml

    loaded = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    given = {k: v for k, v in loaded.items() if k in DataConfig.__dataclass_fields__}
    if not any(given.get(k) for k in ("dataset", "train", "data_dir")):
        raise ZhtuneError(f"{saved} names no data source; give --dataset, --train or --data-dir")
    log.info("data: the model's own split settings from %s", saved)
    return replace(cfg, **given)


def run_cli(ns: argparse.Namespace) -> int:
    """Run ``zhtune evaluate`` from parsed flags; prints the table."""
    cfg = data_from_model(config_from_args(EvaluateConfig, ns), ns.model)
    if ns.no_robustness:
        cfg.robustness = False
    from zhtune.classifier import Classifier

    kw = {"allow_pickle": True} if ns.allow_pickle else {}
    model = Classifier.load(ns.model, device=ns.device, skip_verify=ns.skip_verify, **kw)
    row = evaluate_model(model, cfg, ns.out, save_temperature_to_model=ns.save_temperature)
    if row.get("multi_label"):  # no temperature / abstention for independent probabilities
        from zhtune.evaluation.metrics import table_columns

        single_only = ("ece_calibrated", "parameters")
        columns = [c for c in SUMMARY_COLUMNS if c[0] not in single_only]
        print(format_table([row], table_columns(row, columns)))
        return 0
    print(format_table([row], SUMMARY_COLUMNS))
    a = row["abstain_threshold"]
    print(
        f"\ntemperature {row['temperature']:.3f}: ECE {row['ece']:.4f} -> {row['ece_calibrated']:.4f}; "
        + (
            f"abstaining below confidence {a:.3f} keeps {row['abstain_coverage']:.1%} of rows "
            f"at accuracy >= {cfg.target_accuracy}"
            if a is not None
            else f"no confidence threshold reaches accuracy {cfg.target_accuracy}"
        )
    )
    print(f"outputs and report.html in {ns.out}")
    return 0
