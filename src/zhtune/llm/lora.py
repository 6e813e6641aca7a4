"""``zhtune lora``: LoRA / QLoRA fine-tuning of a decoder LLM as a text classifier.

Modes (``--mode``):

- ``head``: ``AutoModelForSequenceClassification`` (e.g. ``Qwen2ForSequenceClassification``)
  with LoRA on the attention projections; the new ``score`` layer trains and is saved with
  the adapter. ``--freeze-base`` trains the head alone (no LoRA): a cheap baseline.
  ``--long-text head-tail|chunks`` as in ``zhtune finetune`` (:mod:`zhtune.finetune.longtext`,
  stored in ``zhtune.json``).
- ``scoring``: the causal LM scores each class's label word(s) after a prompt
  (:mod:`zhtune.llm.scoring`); LoRA training raises the probability of the gold word.

``--qlora`` loads the base in 4-bit NF4 with double quantization (bitsandbytes; CPU or GPU)
and trains LoRA on top of it (``peft.prepare_model_for_kbit_training``). Training settings,
checkpoints (adapter only), resume, history and figures are those of ``zhtune finetune``
(:mod:`zhtune.training.trainer`). The run directory holds ``adapter_model.safetensors`` +
``adapter_config.json`` (or ``head.safetensors``), the tokenizer, and ``zhtune.json`` (kind
``lora-head`` or ``scoring``: mode, base model, template, label words), so
``Classifier.load(run_dir)`` works; ``zhtune merge`` writes a standalone model.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhtune.config import add_config_args, arg, check, config_from_args, save_config
from zhtune.data import DataConfig, load_splits
from zhtune.data.multilabel import require_single_label
from zhtune.finetune.augment import AugmentConfig, augment_splits
from zhtune.finetune.longtext import LongTextConfig
from zhtune.llm.models import load_backend  # noqa: F401 - Classifier kinds lora-head, scoring
from zhtune.llm.scoring import DEFAULT_TEMPLATE, SCORE_NORMS, WORD_AGGS, parse_label_words
from zhtune.llm.scoring import parse_template as _parse_template
from zhtune.runs import prepare_out_dir, resolve_model, write_json, write_manifest
from zhtune.training.tracking import finish_run, is_main_process
from zhtune.training.trainer import TrainingConfig, count_parameters, free_memory, run_trainer

log = logging.getLogger("zhtune")

MODES = ("head", "scoring")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class LlmConfig(LongTextConfig, AugmentConfig, TrainingConfig):
    """LoRA / QLoRA on a decoder LLM: classification head or label scoring."""

    model: str = arg("", "causal LM directory or hub id (e.g. runs/pretrain-clm-tiny)")
    tokenizer: str | None = arg(None, "tokenizer directory or hub id (default: the model's)")
    mode: str = arg("head", "classification head on the last token, or label-word scoring", MODES)
    lora_r: int = arg(8, "LoRA rank")
    lora_alpha: int = arg(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = arg(0.05, "dropout on the LoRA input")
    target_modules: list[str] = arg(DEFAULT_TARGETS, "linear layers that get LoRA adapters")
    qlora: bool = arg(False, "load the base in 4-bit NF4 + double quantization (bitsandbytes)")
    gradient_checkpointing: bool = arg(False, "recompute activations in backward (less memory)")
    trust_remote_code: bool = arg(
        False, "run a custom-code checkpoint's own Python code (auto_map); only code you trust"
    )
    freeze_base: bool = arg(False, "mode head: train only the classification head (no LoRA)")
    prompt_template: str = arg(DEFAULT_TEMPLATE, "mode scoring: prompt with {text} (\\n = newline)")
    label_words: dict[str, str] | str | None = arg(
        None,
        "mode scoring: LABEL=WORD[|WORD...],... (default: 正面/负面/中性 for sentiment labels, "
        "else the label names)",
    )
    chat_template: bool = arg(
        False, "mode scoring: wrap the prompt with the tokenizer's chat template (instruct models)"
    )
    score_norm: str = arg("sum", "multi-token words: sum or mean of token log-probs", SCORE_NORMS)
    scoring_loss: str = arg(
        "classes",
        "mode scoring: cross-entropy over the classes' label-word scores (PET/LM-BFF), or the "
        "language-model loss of the gold word only",
        ("classes", "lm"),
    )
    word_agg: str = arg("logsumexp", "several words per class: combine their scores", WORD_AGGS)
    learning_rate: float = arg(2e-4, "peak learning rate of AdamW (LoRA needs a larger one)")
    batch_size: int = arg(8, "training batch size per step (before accumulation)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model.strip()), "model", "give --model DIR|HUB_ID (a causal LM)")
        self.model = resolve_model(self.model)  # builtin:NAME -> its shipped directory
        check(self.lora_r >= 1, "lora_r", f"must be >= 1, got {self.lora_r}")
        check(self.lora_alpha >= 1, "lora_alpha", f"must be >= 1, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")  # fmt: skip
        check(bool(self.target_modules), "target_modules", "give at least one module name")
        check(
            not (self.freeze_base and self.mode != "head"),
            "freeze_base",
            "only for --mode head (scoring has no head to train)",
        )
        check(
            not (self.mode == "scoring" and self.loss != "ce"),
            "loss",
            "focal loss is for --mode head; scoring trains the label words' log-likelihood",
        )
        check(
            not (self.mode == "scoring" and self.long_text != "truncate"),
            "long_text",
            f"{self.long_text} is for --mode head; label scoring keeps the prompt's first "
            "max_length tokens (use --long-text truncate)",
        )
        self.prompt_template = _parse_template(self.prompt_template)
        words = parse_label_words(self.label_words)
        self.label_words = (
            None if words is None else ",".join(f"{k}={'|'.join(v)}" for k, v in words.items())
        )


# --- a run ---------------------------------------------------------------------------------
def build_model(cfg: LlmConfig, labels: list[str], tokenizer: Any, splits: Any):
    """(model for the Trainer, train set, dev set, collator or None, extra manifest fields)."""
    from zhtune.finetune import multilabel
    from zhtune.llm.models import (
        HeadOnlyModel,
        ScoringModel,
        add_lora,
        freeze_all_but_head,
        load_base,
    )
    from zhtune.llm.scoring import LabelScorer, ScoringCollator, prompt_dataset, resolve_label_words
    from zhtune.training.trainer import class_weight_tensor, seed_everything

    scorer = None
    if cfg.mode == "scoring":  # bad label words / template fail before the model loads
        words = resolve_label_words(labels, cfg.label_words)
        scorer = LabelScorer(tokenizer, cfg.prompt_template, words, cfg.score_norm,
                             cfg.word_agg, cfg.max_length,
                             chat_template=cfg.chat_template)  # fmt: skip
    seed_everything(cfg.seed)  # the new head and the LoRA matrices start the same
    from zhtune.device import frozen_dtype

    # frozen base: bf16 on a GPU under mixed precision, fp32 on CPU; adapters/head fp32
    base = load_base(cfg.model, cfg.mode, tokenizer, labels, qlora=cfg.qlora,
                     dtype=frozen_dtype(cfg.precision),
                     trust_remote_code=cfg.trust_remote_code)  # fmt: skip
    lora: dict[str, Any] = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                target_modules=cfg.target_modules, qlora=cfg.qlora,
                gradient_checkpointing=cfg.gradient_checkpointing)  # fmt: skip
    lmap = splits.label_map
    model: Any
    if scorer is None:
        if cfg.freeze_base:
            model = HeadOnlyModel(freeze_all_but_head(base, cfg.gradient_checkpointing))
        else:
            model = add_lora(base, "head", **lora)
        if splits.multi_label:  # one sigmoid per label, BCE (zhtune/finetune/multilabel.py)
            base.config.problem_type = multilabel.PROBLEM_TYPE
        # --long-text head-tail | chunks: token windows, as for encoders (finetune/longtext.py)
        train, dev = multilabel.training_inputs(cfg, splits, tokenizer)
        return model, train, dev, None, multilabel.manifest_extra(cfg, splits.multi_label)
    ids = splits.train.label_ids(lmap)
    weight = class_weight_tensor(cfg.class_weights, ids, len(labels))
    model = ScoringModel(add_lora(base, "scoring", **lora), scorer, weight, cfg.scoring_loss)
    train = prompt_dataset(scorer, splits.train.texts, ids)
    dev = prompt_dataset(scorer, splits.dev.texts, splits.dev.label_ids(lmap))
    extra = {
        "template": scorer.template,
        "label_words": scorer.label_words,
        "score_norm": cfg.score_norm,
        "word_agg": cfg.word_agg,
        "chat_template": cfg.chat_template,
    }
    return model, train, dev, ScoringCollator(scorer), extra


def _save(model: Any, cfg: LlmConfig, out: Path) -> None:
    """Adapter (+ head) in safetensors; or ``head.safetensors`` with ``--freeze-base``."""
    from safetensors.torch import save_file

    from zhtune.llm.models import HEAD_FILE, HeadOnlyModel, ScoringModel

    if isinstance(model, HeadOnlyModel):
        state = {f"score.{k}": v.contiguous() for k, v in model.model.score.state_dict().items()}
        save_file(state, str(out / HEAD_FILE))
        return
    peft_model = model.lm if isinstance(model, ScoringModel) else model
    peft_model.save_pretrained(str(out), safe_serialization=True)


def save_run(model: Any, cfg: LlmConfig, out: Path, labels: list[str], tokenizer: Any,
             base_ref: str, extra: dict) -> None:  # fmt: skip
    """Adapter/head, tokenizer and ``zhtune.json``: what ``Classifier.load(out)`` reads."""
    _save(model, cfg, out)
    tokenizer.save_pretrained(out)
    lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
            "target_modules": cfg.target_modules}  # fmt: skip
    write_manifest(
        out,
        "lora-head" if cfg.mode == "head" else "scoring",
        labels,
        mode=cfg.mode,
        base_model=base_ref,
        qlora=cfg.qlora,
        freeze_base=cfg.freeze_base,
        lora=None if cfg.freeze_base else lora,
        max_length=cfg.max_length,
        **extra,
    )


def run_lora(cfg: LlmConfig, out: str | Path) -> dict:
    """Train, keep the best dev checkpoint, save, score the test split; returns test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.device import set_threads
    from zhtune.evaluation.scoring import write_test_outputs
    from zhtune.finetune import multilabel
    from zhtune.llm.models import load_llm_tokenizer, model_ref

    set_threads()
    base_ref = model_ref(cfg.model)
    out = prepare_out_dir(out)
    main = is_main_process()  # under torchrun / accelerate only rank 0 writes run files
    if main:
        save_config(cfg, out)
    splits = augment_splits(load_splits(cfg), cfg)  # train rows only
    if cfg.mode == "scoring":
        require_single_label(splits, "lora --mode scoring (label scoring)")
    if main:
        write_json(out / "data.json", splits.report)
    for w in splits.report["warnings"]:
        log.warning(w)
    labels = list(splits.label_map.names)
    tokenizer = load_llm_tokenizer(cfg.model, cfg.tokenizer)
    model, train, dev, collator, extra = build_model(cfg, labels, tokenizer, splits)
    params = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "lora %s (mode %s%s%s): %d trainable of %d parameters; %d train / %d dev / %d test rows",
        cfg.model, cfg.mode, ", qlora" if cfg.qlora else "", ", frozen base" if cfg.freeze_base
        else "", trainable, params, len(splits.train), len(splits.dev), len(splits.test),
    )  # fmt: skip
    train_cfg = cfg
    if cfg.mode == "scoring":  # an eval batch of B texts forwards B x W candidate rows
        W = model.scorer.n_words
        train_cfg = dataclasses.replace(cfg, eval_batch_size=max(1, cfg.eval_bs // W))
    result = run_trainer(
        model,
        train,
        dev,
        train_cfg,
        out,
        labels,
        tokenizer=tokenizer,
        data_collator=collator,
        **multilabel.trainer_hooks(cfg, splits, "auto" if cfg.mode == "head" else None),
    )
    if not main:  # the other ranks are done once training is
        return {}
    save_run(result.model, cfg, out, labels, tokenizer, base_ref, extra)
    evals = [r for r in result.history if r.get("kind") == "eval"]
    best_step = (
        int(str(result.best_checkpoint).rsplit("-", 1)[1]) if result.best_checkpoint else None
    )
    best_eval = next((r for r in evals if r["step"] == best_step), evals[-1] if evals else {})
    result.model = None
    del model
    free_memory()
    if splits.multi_label:  # per-label thresholds from dev (or --threshold), in zhtune.json
        clf = multilabel.tune_and_store(out, splits, cfg.threshold, cfg.eval_bs)
    else:
        clf = Classifier.load(out)
    name = f"{'qlora' if cfg.qlora else 'lora'}-{cfg.mode}"
    if cfg.freeze_base:
        name = "frozen-head" + ("-4bit" if cfg.qlora else "")
    metrics_extra = {
        "model": f"{name}:{Path(cfg.model).name or cfg.model}",
        "train_seconds": result.train_seconds,
        "parameters": params,
        "trainable_parameters": trainable,
        "steps": result.global_step,
        "best_step": best_step,
        "stopped_early": result.stopped_early,
        "resumed_from": result.resumed_from,
        "dev_accuracy": best_eval.get("eval_accuracy"),
        "dev_macro_f1": best_eval.get("eval_macro_f1"),
    }
    metrics = write_test_outputs(clf, splits, out, extra=metrics_extra, batch_size=cfg.eval_bs)
    del clf
    free_memory()
    finish_run(out, metrics)
    return metrics


# --- the quickstart's LLM branch -----------------------------------------------------------
def run_llm_branch(
    data_cfg: DataConfig,
    out: str | Path,
    *,
    base_model: str | None = None,
    pretrain_minutes: float = 3.0,
    pretrain_max_steps: int = 600,
    max_train_samples: int | None = 2000,
    max_eval_samples: int | None = 500,
    epochs: float = 1.0,
    overrides: dict[str, Any] | None = None,
    zero_shot: dict[str, Any] | None = None,
) -> list[dict]:
    """Tiny causal LM -> LoRA head, LoRA scoring and zero-shot scoring; one row per model.

    ``base_model``: an existing causal LM directory; else a tiny Qwen2 (2 layers, hidden 128)
    is pretrained into ``out/pretrain-clm`` on the texts of the *training split only* (no
    dev/test text), for ``pretrain_max_steps`` steps or ``pretrain_minutes``, whichever comes
    first; an existing one there is reused. LoRA runs use at most ``max_train_samples``
    training and ``max_eval_samples`` dev/test rows. Each row is the run's ``metrics.json``:
    model, accuracy, macro_f1, train_seconds, model_bytes, texts_per_second, parameters,
    pretrain_seconds, ... ``overrides``: LlmConfig fields for both LoRA runs (e.g.
    ``learning_rate``, ``lora_r``, ``batch_size``); ``zero_shot``: ZeroShotConfig fields
    (e.g. ``label_words``, ``calibrate``)."""

    from zhtune.llm.zeroshot import ZeroShotConfig, run_zero_shot

    out = prepare_out_dir(out)
    pretrain_seconds = 0.0
    if base_model is None:
        t = time.perf_counter()
        base_model = str(
            _pretrain_tiny_clm(data_cfg, out / "pretrain-clm", pretrain_minutes, pretrain_max_steps)
        )
        pretrain_seconds = time.perf_counter() - t
    data = {f.name: getattr(data_cfg, f.name) for f in dataclasses.fields(DataConfig)}
    data["max_train_samples"] = data["max_train_samples"] or max_train_samples
    data["max_eval_samples"] = data["max_eval_samples"] or max_eval_samples
    common: dict[str, Any] = dict(model=base_model, num_train_epochs=epochs, batch_size=16, learning_rate=2e-3,
                  max_length=96, eval_every=0.5, warmup_ratio=0.0, progress=False,
                  report_to="none", **data)  # fmt: skip
    common.update(overrides or {})
    rows = []
    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("lora-head", {"mode": "head"}),
        ("lora-scoring", {"mode": "scoring"}),
    )
    for name, kw in modes:
        log.info("LLM branch: %s", name)
        rows.append(run_lora(LlmConfig(**common, **kw), out / name))
    log.info("LLM branch: zero-shot")
    zs = ZeroShotConfig(model=base_model, max_length=96, **data, **(zero_shot or {}))
    rows.append(run_zero_shot(zs, out / "zero-shot"))
    for row in rows:
        row["pretrain_seconds"] = (
            pretrain_seconds or None
        )  # None: a given base, not pretrained here
    return rows


def _pretrain_tiny_clm(data_cfg: DataConfig, out: Path, minutes: float, steps: int) -> Path:
    """A tiny Qwen2 causal LM pretrained on the training split's texts (one a line)."""
    from zhtune.pretrain.loop import PretrainConfig, run_pretrain

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        log.info("LLM branch: reusing the causal LM in %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus-train-split.txt"
    lines = (" ".join(t.split()) for t in load_splits(data_cfg).train.texts)
    corpus.write_text("".join(f"{x}\n" for x in lines if x), encoding="utf-8")
    cfg = PretrainConfig(objective="clm", text_files=[str(corpus)], hidden_size=128, num_heads=4,
                         intermediate_size=512, num_hidden_layers=2, dropout=0.0,
                         max_seq_length=96, batch_size=32, learning_rate=2e-3,
                         warmup_steps=max(1, steps // 20), max_steps=steps, max_minutes=minutes,
                         save_steps=0, log_steps=20, cache_dir="none", seed=data_cfg.seed)  # fmt: skip
    run_pretrain(cfg, out)
    return out


# --- CLI -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory to write")
    add_config_args(parser, LlmConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import print_run_summary

    cfg = config_from_args(LlmConfig, ns)
    print_run_summary(run_lora(cfg, ns.out), ns.out)
    return 0
