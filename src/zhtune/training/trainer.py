"""Shared training plumbing for every command built on the Hugging Face ``Trainer``.

``zhtune finetune`` (encoders) and ``zhtune lora`` (decoder LLMs) both use this module, so
the common settings, losses, metrics, checkpoints and history behave the same everywhere.

API (stable; other commands build on it)
----------------------------------------
``TrainingConfig(DataConfig)``
    The common training settings (learning rate, schedule, epochs, batch size, evaluation
    interval, early stopping, class weights / focal loss, checkpoints, precision, logging).
    A command's config inherits from it and adds its own fields (model, LoRA rank, ...).
``seed_everything(seed)``
    Python/NumPy/torch seeds; call before building a model with freshly initialised weights.
``tokenize_split(split, label_map, tokenizer, max_length) -> datasets.Dataset``
    Columns ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` if the tokenizer gives
    them), ``labels`` (int ids) and ``length``; no padding (the collator pads per batch).
``class_weight_tensor(spec, label_ids, n_labels) -> torch.Tensor | None``
    ``none`` -> None, ``balanced`` -> n / (k * count_c), ``"1,3"`` -> those weights.
``focal_loss(logits, labels, gamma, weight=None, num_items=None) -> torch.Tensor``
    ``sum_i w_{y_i} (1 - p_i)^gamma (-log p_i) / N`` with ``N = num_items or len(labels)``;
    ``gamma=0`` is (weighted) cross-entropy with the same normalisation.
``make_loss_fn(cfg, weight) -> callable | None``
    A ``Trainer(compute_loss_func=...)`` for ``cfg.loss`` / ``cfg.class_weights``;
    None when the model's own (unweighted) cross-entropy is what was asked for.
``make_compute_metrics(labels) -> callable``
    ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1`` and ``f1_<label>``.
``eval_interval(cfg, n_train) -> int`` / ``steps_per_epoch(cfg, n_train) -> int``
    Optimizer steps between evaluations (``eval_every`` < 1 is a fraction of an epoch).
``find_checkpoint(ckpt_dir) -> Path | None``
    Newest *complete* ``checkpoint-N`` (has ``trainer_state.json``, written last by the
    Trainer, and safetensors weights); half-written ones are skipped.
``resolve_resume(spec, ckpt_dir) -> Path | None``
    ``auto`` (newest complete checkpoint, or None), ``none``, or an explicit path (checked).
``HistoryCallback(path)``
    Appends every Trainer log (train loss, learning rate, dev metrics) to ``history.jsonl``.
``run_trainer(model, train_ds, dev_ds, cfg, out, labels, ...) -> TrainResult``
    Builds ``TrainingArguments`` from ``cfg``, trains (resuming when asked), early-stops,
    reloads the best checkpoint and returns it with the history; writes
    ``training_curves.png``. The caller saves the model and scores the test split.
``free_memory()``
    ``gc.collect()`` (+ CUDA cache) between runs in one process; ``del`` your references first.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.config import arg, check, validate_choices
from zhtune.data import DataConfig, LabelMap, Split
from zhtune.device import has_gpu, training_precision
from zhtune.errors import ConfigError, ZhtuneError
from zhtune.training import tracking
from zhtune.training.losses import (  # noqa: F401  (re-exported)
    class_weight_tensor,
    focal_loss,
    make_loss_fn,
    parse_class_weights,
)

log = logging.getLogger("zhtune")

CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "training_curves.png"
METRICS_FOR_BEST = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")


@dataclass
class TrainingConfig(DataConfig):
    """Settings shared by every Trainer-based command (finetune, lora)."""

    learning_rate: float = arg(2e-5, "peak learning rate of AdamW")
    lr_scheduler: str = arg(
        "linear",
        "learning-rate schedule after warmup",
        ("linear", "cosine", "constant_with_warmup", "constant"),
    )
    warmup_ratio: float = arg(0.06, "share of the optimizer steps used for linear warmup")
    warmup_steps: int | None = arg(None, "warmup steps; overrides warmup_ratio when given")
    weight_decay: float = arg(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    num_train_epochs: float = arg(3.0, "number of passes over the training split")
    max_steps: int | None = arg(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = arg(32, "training batch size per step (before accumulation)")
    eval_batch_size: int | None = arg(None, "batch size for dev/test scoring (default 2x)")
    gradient_accumulation_steps: int = arg(1, "batches accumulated per optimizer step")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    max_length: int = arg(128, "truncate texts to this many tokens")
    group_by_length: bool = arg(
        True, "batch texts of similar length together (less padding, faster on CPU)"
    )
    eval_every: float = arg(
        0.5, "evaluate on dev every N optimizer steps (>= 1) or this fraction of an epoch (< 1)"
    )
    metric_for_best: str = arg(
        "macro_f1", "dev metric that picks the best checkpoint", METRICS_FOR_BEST
    )
    patience: int | None = arg(
        None, "early stopping: stop after this many evaluations without improvement (None = off)"
    )
    early_stopping_threshold: float = arg(0.0, "minimum improvement that resets patience")
    class_weights: str = arg(
        "none", "class weights in the loss: none, balanced, or a comma list (one per label)"
    )
    loss: str = arg("ce", "training loss: cross-entropy or focal", ("ce", "focal"))
    gamma: float = arg(2.0, "focal loss focusing parameter (loss focal)")
    save_steps: int | None = arg(
        None, "write a checkpoint every N steps (default: at every evaluation)"
    )
    save_total_limit: int = arg(3, "keep at most this many checkpoints (plus the best)")
    resume_from_checkpoint: str = arg(
        "auto", "auto (newest complete checkpoint in out/checkpoints), none, or a checkpoint path"
    )
    overwrite: bool = arg(
        False, "with resume none: delete the complete checkpoints an earlier run left in out/"
    )
    precision: str = arg(
        "auto",
        "auto = fp16/bf16 on a GPU, fp32 on CPU; bf16 on CPU uses autocast",
        ("auto", "fp32", "bf16", "fp16"),
    )
    torch_compile: bool = arg(False, "compile the model with torch.compile")
    logging_steps: int | None = arg(None, "log the training loss every N steps (default: auto)")
    report_to: str = arg(
        "tensorboard",
        "training logs: TensorBoard (out/tensorboard), MLflow (out/mlruns or $MLFLOW_TRACKING_URI)",
        tracking.REPORT_TO,
    )
    deepspeed: str | None = arg(
        None, "DeepSpeed JSON config (e.g. configs/distributed/ds_zero2.json); GPUs + deepspeed"
    )
    fsdp_config: str | None = arg(
        None, "turn on FSDP with this JSON config (e.g. configs/distributed/fsdp.json); GPUs"
    )
    progress: bool = arg(True, "show progress bars")

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        check(self.num_train_epochs > 0, "num_train_epochs", "must be > 0")
        for name in ("weight_decay", "max_grad_norm", "gamma", "early_stopping_threshold"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "gradient_accumulation_steps", "save_total_limit"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_steps", "eval_batch_size", "patience", "save_steps",
                     "logging_steps"):  # fmt: skip
            v = getattr(self, name)
            low = 0 if name == "warmup_steps" else 1
            check(v is None or v >= low, name, f"must be >= {low} (or none), got {v}")
        check(8 <= self.max_length <= 8192, "max_length", "must be between 8 and 8192")
        check(
            self.eval_every > 0 and (self.eval_every < 1 or float(self.eval_every).is_integer()),
            "eval_every",
            "must be a whole number of steps >= 1 or a fraction of an epoch in (0, 1), "
            f"got {self.eval_every}",
        )
        parse_class_weights(self.class_weights)  # syntax only; the count is checked with labels
        for name in ("deepspeed", "fsdp_config"):
            v = getattr(self, name)
            check(v is None or Path(v).is_file(), name, f"no such JSON file: {v}")

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


# --- small helpers -----------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def free_memory() -> None:
    """Collect garbage (and the CUDA cache) so the next run in this process starts clean.

    ``del`` your own references to the model/trainer first."""
    gc.collect()
    if has_gpu():
        import torch

        torch.cuda.empty_cache()


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def tokenize_split(split: Split, label_map: LabelMap, tokenizer: Any, max_length: int):
    """A ``datasets.Dataset`` of token ids (unpadded), ``labels`` and ``length``."""
    import datasets

    # user text is text: "[SEP]" or "<|endoftext|>" inside it are not special tokens
    enc = tokenizer(split.texts, truncation=True, max_length=max_length, split_special_tokens=True)
    cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    cols["labels"] = split.label_ids(label_map)
    cols["length"] = [len(x) for x in enc["input_ids"]]
    return datasets.Dataset.from_dict(cols)


# --- losses ------------------------------------------------------------------------------
def make_compute_metrics(labels: Sequence[str]) -> Callable:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    ids = list(range(len(labels)))

    def compute(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        y_pred = np.asarray(logits).argmax(-1)
        y = np.asarray(pred.label_ids)
        p, r, f, _ = precision_recall_fscore_support(
            y, y_pred, labels=ids, average="macro", zero_division=0
        )
        out = {
            "accuracy": float(accuracy_score(y, y_pred)),
            "macro_precision": float(p),
            "macro_recall": float(r),
            "macro_f1": float(f),
        }
        _, _, per, _ = precision_recall_fscore_support(
            y, y_pred, labels=ids, average=None, zero_division=0
        )
        out.update({f"f1_{name}": float(v) for name, v in zip(labels, per, strict=True)})
        return out

    return compute


# --- steps -------------------------------------------------------------------------------
def steps_per_epoch(cfg: TrainingConfig, n_train: int) -> int:
    """Optimizer steps per epoch; each step takes batch_size rows on each of the processes."""
    per_step = cfg.batch_size * tracking.world_size()
    return max(1, math.ceil(math.ceil(n_train / per_step) / cfg.gradient_accumulation_steps))


def total_steps(cfg: TrainingConfig, n_train: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(steps_per_epoch(cfg, n_train) * cfg.num_train_epochs))


def eval_interval(cfg: TrainingConfig, n_train: int) -> int:
    """Optimizer steps between dev evaluations."""
    if cfg.eval_every >= 1:
        return int(cfg.eval_every)
    return max(1, round(cfg.eval_every * steps_per_epoch(cfg, n_train)))


# --- checkpoints: zhtune/training_ckpt.py -------------------------------------------------
from zhtune.training.checkpoints import (  # noqa: E402,F401  (re-exported: part of this module's API)
    WEIGHT_FILES,
    _remove_stale_checkpoints,
    _step_of,
    find_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    refuse_to_delete_checkpoints,
    resolve_resume,
)


# --- history -----------------------------------------------------------------------------
def read_history(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


def _truncate_history(path: Path, step: int | None) -> None:
    """Keep the rows logged up to ``step`` (resume) or none (fresh start)."""
    rows = [r for r in read_history(path) if step is not None and r.get("step", 0) <= step]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def HistoryCallback(path: str | Path):  # noqa: N802 - reads like the class it returns
    """A TrainerCallback appending each log as one JSON line: kind train / eval / summary."""
    from transformers import TrainerCallback

    path = Path(path)

    class _History(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero:  # multi-process: rank 0 writes
                return
            logs = dict(logs or {})
            kind = "summary" if "train_runtime" in logs else "train"
            kind = "eval" if any(k.startswith("eval_") for k in logs) else kind
            row = {"kind": kind, "step": state.global_step, "epoch": state.epoch, **logs}
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    return _History()


# --- the training run --------------------------------------------------------------------
@dataclass
class TrainResult:
    model: Any
    global_step: int
    best_checkpoint: str | None
    best_metric: float | None
    train_seconds: float
    stopped_early: bool
    resumed_from: str | None
    history: list[dict] = field(default_factory=list)


def precision_flags(cfg: TrainingConfig) -> dict[str, bool]:
    return training_precision(cfg.precision)


def build_training_args(cfg: TrainingConfig, out: Path, n_train: int):
    from transformers import TrainingArguments

    every = eval_interval(cfg, n_train)
    save = cfg.save_steps or every
    if save % every:
        save = math.ceil(save / every) * every
        log.info("save_steps rounded up to %d (a multiple of the evaluation interval)", save)
    total = total_steps(cfg, n_train)
    warmup = (
        cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total)
    )
    logging_steps = cfg.logging_steps or max(1, min(every, steps_per_epoch(cfg, n_train) // 20))
    if (cfg.deepspeed or cfg.fsdp_config) and not has_gpu():  # the Trainer would drop them
        raise ConfigError("deepspeed / fsdp_config need GPUs; on CPU use plain DDP (torchrun)")
    extra: dict[str, Any] = {"fsdp": bool(cfg.fsdp_config) or None, **precision_flags(cfg)}
    return TrainingArguments(
        output_dir=str(out / CHECKPOINT_DIR),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        optim="adamw_torch",
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_bs,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=save,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best,
        greater_is_better=cfg.metric_for_best != "loss",
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to="none",  # TensorBoard is added as a callback with a fixed log dir
        disable_tqdm=not cfg.progress,
        seed=cfg.seed,
        use_cpu=not has_gpu(),
        dataloader_pin_memory=has_gpu(),
        torch_compile=cfg.torch_compile,
        deepspeed=cfg.deepspeed,
        fsdp_config=cfg.fsdp_config,
        **extra,  # fsdp=True turns FSDP on (transformers' annotation still says str | None)
    )


class _SeededLengthOrder:
    """Length-grouped batches whose order is seeded by (seed, epoch).

    The Trainer's ``LengthGroupedSampler`` draws each epoch's permutation from the global
    torch RNG, which a run resumed in a later epoch does not hold in the state the
    uninterrupted run had: it trained on other batches after the resume. (The random
    sampler is already seeded per epoch.)"""

    def __init__(self, inner: Any, seed: int) -> None:
        self.inner, self.seed, self.epoch = inner, seed, 0

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        self.inner.generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(self.inner)


def _seeded_order_trainer_class():
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class SeededOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                return _SeededLengthOrder(sampler, self.args.seed)
            return sampler

    return SeededOrderTrainer


def run_trainer(
    model: Any,
    train_ds: Any,
    dev_ds: Any,
    cfg: TrainingConfig,
    out: str | Path,
    labels: Sequence[str],
    *,
    tokenizer: Any = None,
    data_collator: Any = None,
    callbacks: Sequence[Any] = (),
    loss_fn: Callable | None | str = "auto",
    compute_metrics: Callable | None = None,
) -> TrainResult:
    """Train ``model`` with the Trainer; return it with the best dev checkpoint loaded.

    ``train_ds`` / ``dev_ds`` come from :func:`tokenize_split` (or have ``labels`` and the
    model's input columns). ``loss_fn="auto"`` builds the loss from ``cfg``; pass None for
    the model's own loss or your own ``compute_loss_func``. Writes ``history.jsonl``,
    TensorBoard logs in ``out/tensorboard`` and ``training_curves.png`` into ``out``."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback

    _SeededOrderTrainer = _seeded_order_trainer_class()  # noqa: N806

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = len(train_ds)
    if n_train == 0:
        raise ZhtuneError("the training split is empty")
    args = build_training_args(cfg, out, n_train)
    if loss_fn == "auto":
        weight = class_weight_tensor(cfg.class_weights, train_ds["labels"], len(labels))
        loss_fn = make_loss_fn(cfg, weight)
    if data_collator is None:
        if tokenizer is None:
            raise ValueError("run_trainer needs a tokenizer or a data_collator")
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    if "length" in dev_ds.column_names:  # less padding; the metrics do not depend on order
        dev_ds = dev_ds.select(np.argsort(dev_ds["length"], kind="stable"))
    resume = _prepare_resume(cfg, out)
    cbs = [HistoryCallback(out / HISTORY_FILE), *callbacks, *tracking.trainer_callbacks(cfg, out)]
    if cfg.patience:
        cbs.append(EarlyStoppingCallback(cfg.patience, cfg.early_stopping_threshold))
    trainer = _SeededOrderTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        data_collator=data_collator,
        compute_metrics=compute_metrics or make_compute_metrics(labels),
        compute_loss_func=loss_fn,
        callbacks=cbs,
    )
    if not cfg.progress:  # no bar, and no raw log dicts printed instead (history.jsonl has them)
        trainer.remove_callback(PrinterCallback)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__.endswith("ForSequenceClassification"):
        # these heads average their own loss and ignore num_items_in_batch: without this the
        # Trainer multiplies it by the number of processes and skips the accumulation divisor
        trainer.model_accepts_loss_kwargs = False
    result = _fit(trainer, cfg, out, resume)
    for cb in cbs:
        if hasattr(cb, "tb_writer") and cb.tb_writer is not None:
            cb.tb_writer.close()
    # drop every local reference to the model: a traceback kept by a lazy import further
    # down (seen with transformers' import machinery) would otherwise keep this frame alive
    del trainer, model, base, cbs
    free_memory()
    if tracking.is_main_process():
        write_training_curves(result.history, out / CURVES_FILE, cfg.metric_for_best)
    return result


def _prepare_resume(cfg: TrainingConfig, out: Path) -> Path | None:
    """The checkpoint to resume (or None); trims history.jsonl; a fresh start drops old ones."""
    resume = resolve_resume(cfg.resume_from_checkpoint, out / CHECKPOINT_DIR)
    resume_step = None
    if resume is not None:
        resume_step = _checkpoint_step(resume)
        log.info("resuming from %s (step %d)", resume, resume_step)
    if tracking.is_main_process():
        _truncate_history(out / HISTORY_FILE, resume_step)
        if resume is None:
            refuse_to_delete_checkpoints(out / CHECKPOINT_DIR, cfg.overwrite)
            _remove_stale_checkpoints(out / CHECKPOINT_DIR)
    return resume


def _fit(trainer: Any, cfg: TrainingConfig, out: Path, resume: Path | None) -> TrainResult:
    """``trainer.train()`` (resuming from ``resume``) and what it ended with."""
    t = time.perf_counter()
    expected = total_steps(cfg, len(trainer.train_dataset))
    with tracking.training_status(out, cfg):  # running -> trained / interrupted / failed
        if resume is not None and _checkpoint_step(resume) >= expected:
            _restore_finished(trainer, resume)
        else:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t
    state = trainer.state
    return TrainResult(
        model=trainer.model,
        global_step=state.global_step,
        best_checkpoint=state.best_model_checkpoint,
        best_metric=state.best_metric,
        train_seconds=seconds,
        stopped_early=bool(cfg.patience) and state.global_step < expected,
        resumed_from=str(resume) if resume else None,
        history=read_history(out / HISTORY_FILE),
    )


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0))


def _restore_finished(trainer: Any, checkpoint: Path) -> None:
    """Resume from a checkpoint at the end of the schedule (a run killed after its last save):
    ``Trainer.train`` would run one step past ``max_steps`` (transformers 5 checks the budget
    only after a step), so restore its state and load the best checkpoint instead."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    source = Path(best) if best and Path(best).is_dir() else checkpoint
    trainer._load_from_checkpoint(str(source))
    log.info("%s is the end of the schedule: nothing left to train; loaded %s", checkpoint, source)


def write_training_curves(history: list[dict], path: Path, metric: str = "macro_f1") -> Path:
    """Train and dev loss and the dev metric against the epoch (``zhtune.plots``)."""
    from zhtune.plots import training_curves_png

    train = [r for r in history if r.get("kind") == "train" and "loss" in r]
    dev = [r for r in history if r.get("kind") == "eval"]
    key = "eval_macro_f1" if metric == "loss" else f"eval_{metric}"
    return training_curves_png(
        train_loss=([r["epoch"] for r in train], [r["loss"] for r in train]),
        dev_loss=([r["epoch"] for r in dev], [r.get("eval_loss", float("nan")) for r in dev]),
        dev_metric=([r["epoch"] for r in dev], [r.get(key, float("nan")) for r in dev]),
        metric_name=key.removeprefix("eval_"),
        path=path,
    )
