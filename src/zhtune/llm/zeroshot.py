"""``zhtune zero-shot``: classify with a causal LM by label scoring, no training.

Each text is put into the prompt template and every class's label word(s) are scored by
their log-probability after it (:mod:`zhtune.llm.scoring`). The run directory gets the test
metrics, predictions and figures of any other run, plus ``zhtune.json`` (kind ``scoring``:
base model, template, label words), so ``Classifier.load(out)`` / evaluate / predict / serve
work on it. The model itself is not copied: ``zhtune.json`` names it.

No training data is needed: ``--test FILE`` alone (or ``--dataset``) is enough; the label set
is ``--labels a,b,c`` (in that order) or the test file's labels. ``--chat-template`` wraps the
prompt in the tokenizer's chat template (instruct models such as Qwen2.5-Instruct).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from zhtune.config import (
    add_config_args,
    arg,
    check,
    config_from_args,
    save_config,
    validate_choices,
)
from zhtune.data import DataConfig, load_splits
from zhtune.data.multilabel import require_single_label
from zhtune.errors import ConfigError, DataError
from zhtune.llm.calibrate import CALIBRATIONS, class_bias
from zhtune.llm.scoring import DEFAULT_TEMPLATE, SCORE_NORMS, WORD_AGGS, parse_label_words
from zhtune.llm.scoring import parse_template as _parse_template
from zhtune.runs import prepare_out_dir, resolve_model, write_json, write_manifest

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
    labels: list[str] | None = arg(
        None, "the label set, in order (default: the labels of the test data)"
    )
    chat_template: bool = arg(
        False, "wrap the prompt with the tokenizer's chat template (instruct models)"
    )
    calibrate: str = arg(
        "none",
        "subtract a per-class bias: content-free = the scores of empty/N/A prompts (Zhao et al. "
        "2021), dev-mean = the mean over the dev texts, labels unread (Zhou et al. 2024)",
        CALIBRATIONS,
    )
    device: str = arg("auto", "auto, cpu, cuda or cuda:N (auto: the first GPU, else CPU)")
    trust_remote_code: bool = arg(
        False, "run a custom-code checkpoint's own Python code (auto_map); only code you trust"
    )

    def __post_init__(self) -> None:
        if self.test and not (self.train or self.dataset or self.data_dir):
            self.train = self.test  # test-only: no training rows are read (test_only_splits)
        super().__post_init__()
        check(bool(self.model.strip()), "model", "give --model DIR|HUB_ID (a causal LM)")
        self.model = resolve_model(self.model)  # builtin:NAME -> its shipped directory
        check(8 <= self.max_length <= 8192, "max_length", "must be between 8 and 8192")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        validate_choices(self)
        self.prompt_template = _parse_template(self.prompt_template)
        words = parse_label_words(self.label_words)
        self.label_words = (
            None if words is None else ",".join(f"{k}={'|'.join(v)}" for k, v in words.items())
        )


def test_only(cfg: ZeroShotConfig) -> bool:
    return bool(cfg.test) and cfg.train == cfg.test and not (cfg.dataset or cfg.data_dir)


def zero_shot_splits(cfg: ZeroShotConfig):
    """The splits to score: the test file alone (``--test``; labels from ``--labels`` or the
    file), else :func:`load_splits` (``--labels`` then fixes the label order)."""
    from zhtune.data.labels import LabelMap
    from zhtune.data.readers import BadRows, read_file
    from zhtune.data.splits import Split, Splits, _to_split

    if not test_only(cfg):
        splits = load_splits(cfg)
        if cfg.labels and set(cfg.labels) != set(splits.label_map.names):
            raise ConfigError(
                f"config field 'labels': {cfg.labels} differ from the data's labels "
                f"{list(splits.label_map.names)}"
            )
        if cfg.labels:
            lmap = LabelMap(tuple(cfg.labels))
            splits = Splits(splits.train, splits.dev, splits.test, lmap, splits.report)
        return splits
    bad = BadRows(cfg.on_bad_row)
    rows = read_file(str(cfg.test), cfg.text_column, cfg.label_column, bad, cfg.file_format)
    lmap = LabelMap.from_labels([r.label or "" for r in rows], cfg.labels or cfg.label_names)
    test = _to_split(rows, lmap, bad)
    if not len(test):
        raise DataError(f"{cfg.test}: no usable rows")
    empty = Split([], [])
    report = {"labels": list(lmap.names), "sizes": {"train": 0, "dev": 0, "test": len(test)},
              "test_only": True, "bad_rows": bad.summary(), "warnings": []}  # fmt: skip
    return Splits(empty, empty, test, lmap, report)


def run_zero_shot(cfg: ZeroShotConfig, out: str | Path) -> dict:
    """Score the test split with no training; returns the test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.device import inference_dtype, resolve_device, set_threads
    from zhtune.evaluation.scoring import write_test_outputs
    from zhtune.llm.models import ScoringBackend, load_base, load_llm_tokenizer, model_ref
    from zhtune.llm.scoring import LabelScorer, resolve_label_words

    set_threads()
    device = resolve_device(cfg.device)
    base_ref = model_ref(cfg.model)
    out = prepare_out_dir(out)
    save_config(cfg, out)
    splits = zero_shot_splits(cfg)
    require_single_label(splits, "zero-shot (label scoring)")
    write_json(out / "data.json", splits.report)
    labels = list(splits.label_map.names)
    words = resolve_label_words(labels, cfg.label_words)
    tokenizer = load_llm_tokenizer(cfg.model, cfg.tokenizer)
    scorer = LabelScorer(tokenizer, cfg.prompt_template, words, cfg.score_norm, cfg.word_agg,
                         cfg.max_length, chat_template=cfg.chat_template)  # fmt: skip
    t = time.perf_counter()
    model = load_base(cfg.model, "scoring", tokenizer, qlora=cfg.qlora, device=device,
                      dtype=inference_dtype(device),
                      trust_remote_code=cfg.trust_remote_code).eval()  # fmt: skip
    load_seconds = time.perf_counter() - t
    log.info("zero-shot %s: labels %s, words %s", cfg.model, labels, words)
    raw = ScoringBackend(model, scorer)
    bias, calibration = class_bias(
        cfg.calibrate, lambda texts: raw.predict_logits(texts, cfg.batch_size), splits.dev.texts
    )
    if bias is not None:
        log.info("calibration %s: class bias %s", cfg.calibrate,
                 ", ".join(f"{k} {b:+.3f}" for k, b in zip(labels, bias, strict=True)))  # fmt: skip
    tokenizer.save_pretrained(out)
    write_manifest(out, "scoring", labels, mode="zero-shot", base_model=base_ref, qlora=cfg.qlora,
                   template=scorer.template, label_words=words, score_norm=cfg.score_norm,
                   word_agg=cfg.word_agg, max_length=cfg.max_length,
                   chat_template=cfg.chat_template, class_bias=bias)  # fmt: skip
    clf = Classifier(ScoringBackend(model, scorer, bias), "scoring", str(out))
    extra = {
        "model": f"zero-shot:{Path(cfg.model).name or cfg.model}",
        "train_seconds": 0.0,
        "load_seconds": load_seconds,
        "label_words": words,
        "template": scorer.template,
        "calibration": {**calibration, "class_bias": bias},
    }
    return write_test_outputs(clf, splits, out, extra=extra, batch_size=cfg.batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory to write")
    add_config_args(parser, ZeroShotConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import print_run_summary

    print_run_summary(run_zero_shot(config_from_args(ZeroShotConfig, ns), ns.out), ns.out)
    return 0
