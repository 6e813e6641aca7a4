"""``zhtune finetune``: fine-tune a BERT/RoBERTa encoder for classification (HF ``Trainer``).

The model is any Hugging Face encoder directory or hub id (the RobertaForMaskedLM that
``zhtune pretrain`` writes, ``hfl/chinese-roberta-wwm-ext``, ...) or ``none`` for a
randomly initialised tiny RoBERTa (the "from scratch" control). Training settings come from
:class:`zhtune.training.trainer.TrainingConfig`; the run directory gets the best dev checkpoint in
Hugging Face format (label names in ``id2label``, ``zhtune_max_length`` in its config),
``zhtune.json`` (kind ``encoder``), test metrics, predictions, history and figures.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhtune.config import add_config_args, arg, check, config_from_args, save_config
from zhtune.data import DataConfig, load_splits
from zhtune.device import trainable_dtype
from zhtune.errors import ConfigError, ModelLoadError, ZhtuneError
from zhtune.finetune.augment import AugmentConfig, augment_splits
from zhtune.finetune.longtext import LongTextConfig
from zhtune.runs import prepare_out_dir, resolve_model, write_json, write_manifest
from zhtune.training.tracking import finish_run, is_main_process
from zhtune.training.trainer import TrainingConfig, count_parameters, free_memory, run_trainer

log = logging.getLogger("zhtune")

SCRATCH = ("none", "scratch")
# settings a run must share with the checkpoints it resumes from (plus every data field)
RESUME_MUST_MATCH = (
    "model", "tokenizer", "from_scratch", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "intermediate_size", "max_length", "batch_size",
    "gradient_accumulation_steps", "augment", "augment_copies", "augment_rate",
)  # fmt: skip
# config attribute names of the dropout probabilities, per architecture family
HIDDEN_DROPOUT_ATTRS = ("hidden_dropout_prob", "dropout", "hidden_dropout")
ATTENTION_DROPOUT_ATTRS = ("attention_probs_dropout_prob", "attention_dropout")


@dataclass
class FinetuneConfig(LongTextConfig, AugmentConfig, TrainingConfig):
    """Fine-tune an encoder (BERT/RoBERTa family) with a classification head."""

    model: str = arg(
        "",
        "model directory or hub id (e.g. runs/pretrain, hfl/chinese-roberta-wwm-ext); "
        "'none' = a randomly initialised tiny RoBERTa (sizes below)",
    )
    tokenizer: str | None = arg(
        None, "tokenizer directory or hub id (default: the model's; 'none' model: built-in vocab)"
    )
    from_scratch: bool = arg(
        False, "ignore the model's weights: random init of its architecture (a control run)"
    )
    hidden_size: int = arg(256, "model none: hidden size")
    num_hidden_layers: int = arg(4, "model none: number of layers")
    num_attention_heads: int = arg(4, "model none: attention heads")
    intermediate_size: int = arg(1024, "model none: feed-forward size")
    hidden_dropout: float | None = arg(None, "override the model's hidden dropout probability")
    attention_dropout: float | None = arg(
        None, "override the model's attention dropout probability"
    )
    allow_pickle: bool = arg(
        False, "allow loading .bin (pickle) weights of a model you trust (default: safetensors)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            bool(self.model.strip()),
            "model",
            "give --model DIR|HUB_ID, or --model none for a randomly initialised tiny RoBERTa",
        )
        self.model = resolve_model(self.model)  # builtin:NAME -> its shipped directory
        for name in ("hidden_dropout", "attention_dropout"):
            v = getattr(self, name)
            check(v is None or 0 <= v < 1, name, f"must be in [0, 1), got {v}")
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(
            self.hidden_size % self.num_attention_heads == 0,
            "num_attention_heads",
            f"hidden_size {self.hidden_size} must be divisible by it",
        )

    @property
    def scratch_model(self) -> bool:
        return self.model.strip().lower() in SCRATCH


def _set_dropout(config: Any, cfg: FinetuneConfig) -> None:
    for value, attrs, name in (
        (cfg.hidden_dropout, HIDDEN_DROPOUT_ATTRS, "hidden_dropout"),
        (cfg.attention_dropout, ATTENTION_DROPOUT_ATTRS, "attention_dropout"),
    ):
        if value is None:
            continue
        found = [a for a in attrs if hasattr(config, a)]
        if not found:
            raise ConfigError(
                f"config field '{name}': the model config ({type(config).__name__}) has none of "
                f"{', '.join(attrs)}"
            )
        for a in found:
            setattr(config, a, value)


def check_model_path(model: str) -> Path:
    """Fail fast (no hub lookup) when ``model`` names a local path that is not a directory."""
    local = Path(model).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"{model}: not a model directory")
    if not local.exists() and (local.is_absolute() or model.startswith((".", "~"))):
        raise ModelLoadError(f"{model}: no such model directory")
    return local


def load_tokenizer_for(cfg: FinetuneConfig) -> Any:
    """--tokenizer, else the model's own, else (model none / no tokenizer files) the built-in."""
    from zhtune.text import tokenizer_for_model

    if cfg.tokenizer or cfg.scratch_model:
        return tokenizer_for_model(None, cfg.tokenizer)
    return tokenizer_for_model(str(check_model_path(cfg.model)))


def build_model(cfg: FinetuneConfig, labels: list[str], tokenizer: Any):
    """A sequence-classification model with ``labels`` in its config (id2label/label2id)."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from zhtune.runs import check_safetensors
    from zhtune.training.trainer import seed_everything

    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    seed_everything(cfg.seed)  # the classifier head (and a scratch model) start the same
    if cfg.scratch_model:
        config: Any = RobertaConfig(  # type: ignore[call-arg]
            vocab_size=vocab_rows(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_length + tokenizer.pad_token_id + 2,
            type_vocab_size=2,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
        )
        _set_dropout(config, cfg)
        return RobertaForSequenceClassification(config)
    local = check_model_path(cfg.model)
    try:
        config = AutoConfig.from_pretrained(
            cfg.model, num_labels=len(labels), id2label=id2label, label2id=label2id
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a model config from {cfg.model!r}: {e}") from None
    _set_dropout(config, cfg)
    _check_fits(config, cfg, tokenizer)
    if cfg.from_scratch:
        return _fit_vocab(AutoModelForSequenceClassification.from_config(config), tokenizer)
    check_safetensors(local, cfg.allow_pickle)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model,
            config=config,
            use_safetensors=None if cfg.allow_pickle else True,
            dtype=trainable_dtype(),  # a bf16/fp16 checkpoint is trained with fp32 weights
        )
        return _fit_vocab(model, tokenizer)
    except (OSError, ValueError) as e:
        hint = (
            ""
            if cfg.allow_pickle
            else " (only .bin weights? if you trust them: --allow-pickle true)"
        )
        raise ModelLoadError(f"cannot load weights from {cfg.model!r}: {e}{hint}") from None


def vocab_rows(tokenizer: Any) -> int:
    """Embedding rows the tokenizer needs: its largest id + 1 (its ids may have gaps)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def _fit_vocab(model: Any, tokenizer: Any):
    """Add embedding rows when the tokenizer's largest id is beyond the model's vocabulary.

    A tokenizer whose ids run past its ``len`` (e.g. one saved by an older zhtune, which read
    the vocabulary's two U+2028 entries as line breaks) would otherwise fail with an
    IndexError on its last tokens."""
    rows = model.get_input_embeddings().num_embeddings
    need = vocab_rows(tokenizer)
    if need > rows:
        log.warning("tokenizer ids reach %d but the model has %d embedding rows: adding %d "
                    "(untrained) rows", need - 1, rows, need - rows)  # fmt: skip
        model.resize_token_embeddings(need, mean_resizing=False)
    return model


def _check_fits(config: Any, cfg: FinetuneConfig, tokenizer: Any) -> None:
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} entries but the model's vocabulary only {vocab}; "
            "use the tokenizer the model was trained with (--tokenizer)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    offset = (config.pad_token_id or 0) + 1 if config.model_type == "roberta" else 0
    if positions is not None and cfg.max_length + offset > positions:
        raise ConfigError(
            f"config field 'max_length': {cfg.max_length} exceeds the model's "
            f"{positions - offset} positions"
        )


def check_resume_matches(cfg: FinetuneConfig, out: Path) -> None:
    """With ``resume_from_checkpoint auto``, refuse checkpoints written with other settings."""
    import yaml

    from zhtune.training.trainer import CHECKPOINT_DIR, find_checkpoint

    saved_path = out / "config.yaml"
    if cfg.resume_from_checkpoint.strip().lower() != "auto" or not saved_path.is_file():
        return
    if find_checkpoint(out / CHECKPOINT_DIR) is None:
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    keys = (*DataConfig.__dataclass_fields__, *RESUME_MUST_MATCH)
    diff = [
        f"{k}={saved[k]!r} (now {getattr(cfg, k)!r})"
        for k in keys
        if k in saved and saved[k] != getattr(cfg, k)
    ]
    if diff:
        raise ZhtuneError(
            f"{out} holds checkpoints of a run with {', '.join(diff)}; use the same settings to "
            "resume, --resume-from-checkpoint none to start afresh, or another --out"
        )


def run_finetune(cfg: FinetuneConfig, out: str | Path) -> dict:
    """Train, keep the best dev checkpoint, score the test split; returns the test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.device import set_threads
    from zhtune.evaluation.scoring import write_test_outputs
    from zhtune.finetune import multilabel

    set_threads()
    out = prepare_out_dir(out)
    main = is_main_process()  # under torchrun / accelerate only rank 0 writes run files
    check_resume_matches(cfg, out)
    if main:
        save_config(cfg, out)
    splits = augment_splits(load_splits(cfg), cfg)  # train rows only
    if main:
        write_json(out / "data.json", splits.report)
    for w in splits.report["warnings"]:
        log.warning(w)
    labels = list(splits.label_map.names)
    tokenizer = load_tokenizer_for(cfg)
    model = build_model(cfg, labels, tokenizer)
    if splits.multi_label:
        model.config.problem_type = multilabel.PROBLEM_TYPE  # sigmoid per label, BCE
    params = count_parameters(model)
    log.info(
        "finetune %s: %d parameters; %d train / %d dev / %d test rows; labels %s",
        cfg.model,
        params,
        len(splits.train),
        len(splits.dev),
        len(splits.test),
        labels,
    )
    train_ds, dev_ds = multilabel.training_inputs(cfg, splits, tokenizer)
    hooks = multilabel.trainer_hooks(cfg, splits, "auto")  # loss_fn, compute_metrics
    result = run_trainer(model, train_ds, dev_ds, cfg, out, labels, tokenizer=tokenizer, **hooks)
    if not main:  # rank 0 saves the model and scores the test split
        return {}
    best = result.model
    best.config.zhtune_max_length = cfg.max_length
    best.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    extra_manifest = multilabel.manifest_extra(cfg, splits.multi_label)
    manifest = dict(base_model=cfg.model, max_length=cfg.max_length, **extra_manifest)
    write_manifest(out, "encoder", labels, **manifest)
    evals = [r for r in result.history if r.get("kind") == "eval"]
    best_eval = next(
        (r for r in evals if result.best_checkpoint and r["step"] == _ckpt_step(result)),
        evals[-1] if evals else {},
    )
    result.model = None
    del model, best
    free_memory()
    if splits.multi_label:  # per-label thresholds from dev (or --threshold), in zhtune.json
        clf = multilabel.tune_and_store(out, splits, cfg.threshold, cfg.eval_bs)
    else:
        clf = Classifier.load(out)
    extra = {
        "model": f"finetune:{Path(cfg.model).name or cfg.model}"
        + (" (scratch)" if cfg.from_scratch or cfg.scratch_model else ""),
        "train_seconds": result.train_seconds,
        "parameters": params,
        "steps": result.global_step,
        "best_step": _ckpt_step(result),
        "stopped_early": result.stopped_early,
        "resumed_from": result.resumed_from,
        "dev_accuracy": best_eval.get("eval_accuracy"),
        "dev_macro_f1": best_eval.get("eval_macro_f1"),
    }
    metrics = write_test_outputs(clf, splits, out, extra=extra, batch_size=cfg.eval_bs)
    del clf
    free_memory()
    finish_run(out, metrics)
    return metrics


def _ckpt_step(result: Any) -> int | None:
    if not result.best_checkpoint:
        return None
    return int(str(result.best_checkpoint).rsplit("-", 1)[1])


# --- CLI -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory to write")
    add_config_args(parser, FinetuneConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import print_run_summary

    cfg = config_from_args(FinetuneConfig, ns)
    print_run_summary(run_finetune(cfg, ns.out), ns.out)
    return 0
