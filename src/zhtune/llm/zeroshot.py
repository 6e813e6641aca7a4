"""``zhtune zero-shot``: classify with a causal LM by label scoring, no training.

Each text is put into the prompt template and every class's label word(s) are scored by
their log-probability after it (:mod:`zhtune.llm.scoring`). The run directory gets the test
metrics, predictions and figures of any other run, plus ``zhtune.json`` (kind ``scoring``:
base model, template, label words), so ``Classifier.load(out)`` / evaluate / predict / serve
work on it. The model itself is not copied: ``zhtune.json`` names it.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from zhtune.config import add_config_args, arg, check, config_from_args, save_config
from zhtune.data import DataConfig, load_splits
from zhtune.data.multilabel import require_single_label
from zhtune.llm.scoring import DEFAULT_TEMPLATE, SCORE_NORMS, WORD_AGGS, parse_label_words
from zhtune.llm.scoring import parse_template as _parse_template
from zhtune.runs import prepare_out_dir, write_json, write_manifest

log = logging.getLogger("zhtune")


@dataclass
class ZeroShotConfig(DataConfig):
    """Zero-shot label scoring with a causal LM."""

    model: str = arg("", "causal LM directory or hub id")
    tokenizer: str | None = arg(None, "tokenizer directory or hub id (default: the model's)")
    prompt_template: str = arg(DEFAULT_TEMPLATE, "prompt with {text} (\\n = newline)")
    label_words: dict[str, str] | str | None = arg(
        None,
        "LABEL=WORD[|WORD...],... (default: 正面/负面/中性 for sentiment labels, else the label names)",
    )
    score_norm: str = arg("sum", "multi-token words: sum or mean of token log-probs", SCORE_NORMS)
    word_agg: str = arg("logsumexp", "several words per class: combine their scores", WORD_AGGS)
    qlora: bool = arg(False, "load the model in 4-bit NF4 (bitsandbytes) to save memory")
    max_length: int = arg(128, "truncate the prompt to this many tokens")
    batch_size: int = arg(16, "texts per forward pass (x the number of label words)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model.strip()), "model", "give --model DIR|HUB_ID (a causal LM)")
        check(8 <= self.max_length <= 8192, "max_length", "must be between 8 and 8192")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        self.prompt_template = _parse_template(self.prompt_template)
        words = parse_label_words(self.label_words)
        self.label_words = (
            None if words is None else ",".join(f"{k}={'|'.join(v)}" for k, v in words.items())
        )


def run_zero_shot(cfg: ZeroShotConfig, out: str | Path) -> dict:
    """Score the test split with no training; returns the test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.device import set_threads
    from zhtune.evaluation.scoring import write_test_outputs
    from zhtune.llm.models import ScoringBackend, load_base, load_llm_tokenizer, model_ref
    from zhtune.llm.scoring import LabelScorer, resolve_label_words

    set_threads()
    base_ref = model_ref(cfg.model)
    out = prepare_out_dir(out)
    save_config(cfg, out)
    splits = load_splits(cfg)
    require_single_label(splits, "zero-shot (label scoring)")
    write_json(out / "data.json", splits.report)
    labels = list(splits.label_map.names)
    words = resolve_label_words(labels, cfg.label_words)
    tokenizer = load_llm_tokenizer(cfg.model, cfg.tokenizer)
    scorer = LabelScorer(tokenizer, cfg.prompt_template, words, cfg.score_norm, cfg.word_agg,
                         cfg.max_length)  # fmt: skip
    t = time.perf_counter()
    model = load_base(cfg.model, "scoring", tokenizer, qlora=cfg.qlora).eval()
    load_seconds = time.perf_counter() - t
    log.info("zero-shot %s: labels %s, words %s", cfg.model, labels, words)
    tokenizer.save_pretrained(out)
    write_manifest(out, "scoring", labels, mode="zero-shot", base_model=base_ref, qlora=cfg.qlora,
                   template=scorer.template, label_words=words, score_norm=cfg.score_norm,
                   word_agg=cfg.word_agg, max_length=cfg.max_length)  # fmt: skip
    clf = Classifier(ScoringBackend(model, scorer), "scoring", str(out))
    extra = {
        "model": f"zero-shot:{Path(cfg.model).name or cfg.model}",
        "train_seconds": 0.0,
        "load_seconds": load_seconds,
        "label_words": words,
        "template": scorer.template,
    }
    return write_test_outputs(clf, splits, out, extra=extra, batch_size=cfg.batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory to write")
    add_config_args(parser, ZeroShotConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import format_table

    m = run_zero_shot(config_from_args(ZeroShotConfig, ns), ns.out)
    cols = [("model", "model"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
            ("n", "test rows"), ("texts_per_second", "texts/s")]  # fmt: skip
    print(format_table([m], cols))
    print(f"\nrun directory: {ns.out}")
    return 0
