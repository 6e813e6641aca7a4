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

from zhtune.config import save_config, to_dict
from zhtune.device import autocast_context, bf16_supported, resolve_device  # noqa: F401
from zhtune.errors import ZhtuneError
from zhtune.pretrain import distributed as ddp
from zhtune.pretrain import electra
from zhtune.pretrain.config import ELECTRA_MUST_MATCH, RESUME_MUST_MATCH, PretrainConfig  # noqa: F401
from zhtune.pretrain.model import (  # noqa: F401  (re-exported: the names tests and benchmarks use)
    build_model,
    compile_body,
    evaluate,
    make_collator,
    make_optimizer,
    param_counts,
    predict_targets,
)
from zhtune.training.tracking import finish_run, start_logging

if TYPE_CHECKING:
    from zhtune.pretrain.corpus import Chunks

log = logging.getLogger("zhtune")


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
    scorer: Any  # ddp.Scorer(model), inside DDP with several processes, or sharded by FSDP2
    counts: dict[str, int]  # param_counts(model)
    rank: int  # this process (0 when not launched by torchrun / accelerate)
    world: int  # processes
    sharding: str  # none (DDP) | fsdp | zero2 (FSDP2; checkpoints hold full state dicts)
    global_batch: int  # chunks per optimizer step, all processes together
    steps_per_epoch: int
    total: int  # planned optimizer steps: the schedule depends on this only
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    collate: Any  # WholeWordMaskCollator / CausalCollator (seeded; the same on every rank)

    @property
    def main(self) -> bool:
        """The process that writes files."""
        return self.rank == 0


@dataclass
class PretrainState:
    """Where training stands: what a checkpoint saves and a resume restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    consumed: int = 0  # batches of this epoch done
    history: list[dict] = field(default_factory=list)  # the history.jsonl rows so far
    prev_seconds: float = 0.0  # training seconds before this process started (resume)
    stopped: str | None = None  # why max_minutes ended training early, if it did


@dataclass
class _Window:
    """The steps since the last history row."""

    start: float  # time.perf_counter() when the window began
    loss: float = 0.0  # summed over its steps
    steps: int = 0
    tokens: int = 0  # real (non-padding) tokens, all processes


def _schedule(warmup: int, total: int):
    """Linear warm-up, then linear decay to 0 at the last planned step. A pure function of
    the step: a time budget never changes it, so a rerun or a resume replays it exactly."""

    def lr_factor(step: int) -> float:
        left = (total - step) / max(1, total - warmup)
        return max(0.0, min(step / warmup if step < warmup else 1.0, left))

    return lr_factor


def optimizer_step(
    scorer, micro: list[dict], n_scored: int, optimizer, scheduler, cfg: PretrainConfig,
    autocast, world: int = 1, loss_of: Callable | None = None,
) -> float:  # fmt: skip
    """One optimizer step over this process's micro-batches of a global batch with
    ``n_scored`` scored positions in all; returns this process's summed cross-entropy.

    Each micro-batch adds ``world × sum(CE) / n_scored`` to the gradient (DDP or FSDP then
    averages over the processes), so the step's gradient is that of the mean over the global
    batch. ``loss_of(scorer output)`` replaces the summed cross-entropy (ELECTRA).
    """
    loss_total = 0.0
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        with ddp.sync_gradients(scorer, sync=last or world == 1):
            with autocast():
                out = scorer(**batch)  # logits (M, V), targets (M,)[, ELECTRA's (N,), (N,), input]
            loss_sum = (
                loss_of(out)
                if loss_of
                else F.cross_entropy(out[0].float(), out[1], reduction="sum")
            )
            (loss_sum * (world / max(n_scored, 1))).backward()
        loss_total += loss_sum.item()
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), cfg.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total


def n_scored(batch: dict, objective: str) -> int:
    """Positions the loss is taken at: masked tokens (MLM) or real next tokens (CLM)."""
    if objective in ("mlm", "electra"):  # electra: + disc_weight x BCE (electra.step_loss)
        return int((batch["labels"] != -100).sum())
    return int(batch["attention_mask"][:, 1:].sum())


def train_step(model, batch: dict, optimizer, scheduler, cfg: PretrainConfig, autocast) -> float:
    """One optimizer step on one batch in one process; returns the mean loss."""
    n = n_scored(batch, cfg.objective)
    scorer = ddp.Scorer(model, cfg.objective)
    loss_of = electra.step_loss(batch, cfg) if cfg.objective == "electra" else None
    return optimizer_step(
        scorer, [batch], n, optimizer, scheduler, cfg, autocast, 1, loss_of
    ) / max(n, 1)


def run_pretrain(
    cfg: PretrainConfig, out: str | Path, _stop_after: int | None = None
) -> PretrainResult:
    """Pretrain and write the run directory (rank 0 only, under torchrun / accelerate).
    ``_stop_after`` (tests) simulates an interruption: the loop ends after that step,
    right after saving its checkpoint, without final outputs."""
    run = _setup(cfg, out)
    state = _resume(run)
    if run.main:
        _log_plan(run)
    train_seconds = _train(run, state, _stop_after)
    if train_seconds is None:  # interrupted by _stop_after
        return PretrainResult(run.model, run.tokenizer, {}, state.history)
    result = _finish(run, state, train_seconds)
    ddp.close()
    return result


def _load_data(cfg: PretrainConfig, out: Path, main: bool) -> tuple[Any, Chunks, Chunks, dict]:
    """The tokenizer, the train and held-out chunks and the data report (``data.json``).
    Rank 0 builds (and caches) the corpus first; the other ranks then read the cache."""
    from zhtune.pretrain.corpus import load_corpus
    from zhtune.pretrain.model import check_tokenizer
    from zhtune.runs import write_json
    from zhtune.text import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer_path)
    check_tokenizer(tokenizer, cfg.objective)  # before the corpus is tokenized
    if not main:
        ddp.barrier()  # wait for rank 0's cache
    train, held_out, report = load_corpus(cfg, tokenizer)
    if main:
        ddp.barrier()
    log.info(
        "corpus: %d texts -> %d train / %d held-out chunks of <= %d tokens (%d empty and %d "
        "duplicate chunks dropped; cache: %s)",
        report["texts"], report["train_chunks"], report["eval_chunks"], cfg.max_seq_length,
        report["empty_chunks_dropped"], report["duplicate_chunks_dropped"], report["cache"],
    )  # fmt: skip
    if len(train) == 0:
        raise ZhtuneError("the corpus has no training chunks; give more text")
    if main:
        write_json(out / "data.json", report)
    return tokenizer, train, held_out, report


def _setup(cfg: PretrainConfig, out: str | Path) -> PretrainRun:
    """Process group, run directory, data, a fresh model, optimizer, schedule and collator."""
    from zhtune.runs import prepare_out_dir

    rank, world, device, sharding = ddp.init(resolve_device(cfg.device), cfg.sharding)
    out_dir = prepare_out_dir(out) if rank == 0 else Path(out)
    if rank == 0:
        save_config(cfg, out_dir)
    tokenizer, train, held_out, report = _load_data(cfg, out_dir, rank == 0)
    autocast, precision = autocast_context(cfg.precision, device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model = build_model(cfg, tokenizer).to(device)  # seeded by cfg.seed: the same on every rank
    model.train()
    if cfg.compile:
        compile_body(model, cfg.objective)
    counts = param_counts(model)
    scorer = ddp.wrap(model, cfg.objective, device, sharding)  # before the optimizer (FSDP)
    global_batch = cfg.batch_size * world * cfg.gradient_accumulation_steps
    steps_per_epoch = len(epoch_batches(cfg, train.lengths, world, 0))
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.warmup_steps, total))
    collate = make_collator(cfg, tokenizer, seed=cfg.seed)
    torch.manual_seed(cfg.seed + rank)  # dropout: its own stream per rank
    return PretrainRun(
        cfg=cfg, out=out_dir, tokenizer=tokenizer, train=train, held_out=held_out, report=report,
        device=device, autocast=autocast, precision=precision, model=model, scorer=scorer,
        counts=counts, rank=rank, world=world, sharding=sharding, global_batch=global_batch,
        steps_per_epoch=steps_per_epoch, total=total, optimizer=optimizer, scheduler=scheduler, collate=collate,
    )  # fmt: skip


def _fresh_start(cfg: PretrainConfig, ckpt_dir: Path) -> None:
    """Never delete or mix with an earlier run's complete checkpoints unless ``overwrite``."""
    from zhtune.training.checkpoints import refuse_to_delete_checkpoints, remove_stale_checkpoints
    from zhtune.training.tracking import is_main_process

    found = refuse_to_delete_checkpoints(ckpt_dir, cfg.overwrite)
    if found and is_main_process():
        remove_stale_checkpoints(ckpt_dir)


def _resume(run: PretrainRun) -> PretrainState:
    """A fresh state, or the checkpoint's: model, optimizer, scheduler and random states are
    restored in place on every rank (``resume_from_checkpoint``: auto, none or a path)."""
    from zhtune.training.checkpoints import (
        check_resumable,
        load_checkpoint,
        read_state,
        resolve_resume,
    )

    cfg = run.cfg
    ckpt = resolve_resume(cfg.resume_from_checkpoint, run.out / "checkpoints")
    if ckpt is None:
        _fresh_start(cfg, run.out / "checkpoints")
        return PretrainState()
    fields = RESUME_MUST_MATCH + (ELECTRA_MUST_MATCH if cfg.objective == "electra" else ())
    check_resumable(ckpt, to_dict(cfg), run.report["corpus_key"], fields)
    saved = read_state(ckpt)
    if saved.get("world_size", 1) != run.world:
        raise ZhtuneError(
            f"cannot resume from {ckpt}: it was written by {saved.get('world_size', 1)} "
            f"process(es), this run has {run.world} (the global batch would change)"
        )
    if saved.get("sharding", "none") != run.sharding:
        raise ZhtuneError(
            f"cannot resume from {ckpt}: it was written with sharding "
            f"{saved.get('sharding', 'none')}, this run has {run.sharding} (set --sharding)"
        )
    loader = ddp.state_loader(run.model, run.optimizer, run.sharding)
    rng, saved = load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler, loader)
    torch.set_rng_state(rng.get(f"torch.rank{run.rank}", rng["torch"]))
    run.collate.generator.set_state(rng["mask"])
    if cfg.objective == "electra":  # the generator's samples
        electra.load_rng(run.model, run.device, rng, run.rank)
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


def _checkpoint(run: PretrainRun, state: PretrainState, seconds: float) -> Path | None:
    """Save model, optimizer, scheduler, random states (every rank's) and ``state`` as
    checkpoints/step-N (rank 0 writes; every rank must call it)."""
    from zhtune.training.checkpoints import save_checkpoint

    states = ddp.gather_rng(torch.get_rng_state())
    model, optimizer = ddp.checkpoint_states(run.model, run.optimizer, run.sharding)
    samplers: dict = {}
    if run.cfg.objective == "electra":  # every rank's sampler (a collective)
        electra.save_rng(run.model, run.device, samplers)
    if not run.main:
        return None
    rng = {"torch": states[0], "mask": run.collate.generator.get_state(), **samplers}
    rng.update({f"torch.rank{r}": s for r, s in enumerate(states) if r > 0})
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state()
    saved = {"epoch": state.epoch, "consumed": state.consumed, "history": state.history,
             "train_seconds": seconds, "corpus_key": run.report["corpus_key"],
             "world_size": run.world, "sharding": run.sharding, "config": to_dict(run.cfg)}  # fmt: skip
    return save_checkpoint(run.out / "checkpoints", state.step, model, optimizer,
                           run.scheduler, rng, saved, run.cfg.save_total_limit)  # fmt: skip


def _log_plan(run: PretrainRun) -> None:
    """One log line: model, size, steps, global batch, precision and device."""
    cfg, counts = run.cfg, run.counts
    log.info(
        "%s %s: %.2fM parameters (%.2fM non-embedding), %d steps (%d per epoch), global batch "
        "%d = %d per process x %d process(es) x %d accumulation, sharding %s, %s on %s",
        cfg.objective, cfg.arch, counts["total"] / 1e6, counts["non_embedding"] / 1e6, run.total,
        run.steps_per_epoch, run.global_batch, cfg.batch_size, run.world,
        cfg.gradient_accumulation_steps, run.sharding, run.precision, run.device,
    )  # fmt: skip
    if cfg.max_minutes:
        log.info("max_minutes %s: a hard stop only (the schedule is %d steps)", cfg.max_minutes, run.total)  # fmt: skip


def epoch_batches(
    cfg: PretrainConfig, lengths: np.ndarray, world: int, epoch: int
) -> list[np.ndarray]:
    """The global batches of one epoch (``batch_size`` x ``world`` x accumulation chunks);
    with several processes a short last batch (fewer rows than processes x accumulation)
    is dropped so every rank has rows."""
    from zhtune.pretrain.corpus import batch_order

    accum = cfg.gradient_accumulation_steps
    size = cfg.batch_size * world * accum
    order = batch_order(lengths, size, cfg.seed, epoch, cfg.group_by_length)
    return [b for b in order if len(b) >= world * accum] if world > 1 else order


def _train(run: PretrainRun, state: PretrainState, stop_after: int | None) -> float | None:
    """The training loop, from ``state`` to ``run.total`` steps or the ``max_minutes`` stop.

    Returns the training seconds (across resumes), or None when ``stop_after`` ended it."""
    from tqdm.auto import tqdm

    cfg, train = run.cfg, run.train
    tracker = start_logging(cfg.report_to, run.out, to_dict(cfg))  # no-op off rank 0
    order = epoch_batches(cfg, train.lengths, run.world, state.epoch)
    bar = tqdm(total=run.total, initial=state.step, desc=f"pretrain ({cfg.objective})",
               unit="step", disable=None if run.main else True)  # fmt: skip
    t_start = time.perf_counter()
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None

    def seconds() -> float:  # training seconds so far, across resumes
        return state.prev_seconds + time.perf_counter() - t_start

    window = _Window(t_start)
    while state.step < run.total:
        if state.consumed >= len(order):  # next epoch
            state.epoch, state.consumed = state.epoch + 1, 0
            order = epoch_batches(cfg, train.lengths, run.world, state.epoch)
        # the global batch, masked the same way on every rank, then this rank's rows of it
        batch = run.collate([train[i] for i in order[state.consumed]])  # each (B_global, T)
        n = n_scored(batch, cfg.objective)
        micro = ddp.my_rows(batch, run.rank, run.world, cfg.gradient_accumulation_steps)
        micro = [{k: v.to(run.device, non_blocking=True) for k, v in b.items()} for b in micro]
        lr = run.optimizer.param_groups[0]["lr"]
        loss_of = electra.step_loss(batch, cfg) if cfg.objective == "electra" else None
        loss_sum = optimizer_step(run.scorer, micro, n, run.optimizer, run.scheduler, cfg,
                                  run.autocast, run.world, loss_of)  # fmt: skip
        loss = ddp.sum_scalar(loss_sum, run.device) / max(n, 1)  # the global batch's mean
        state.step, state.consumed = state.step + 1, state.consumed + 1
        window.loss, window.steps = window.loss + loss, window.steps + 1
        window.tokens += int(batch["attention_mask"].sum())  # all processes' real tokens
        out_of_time = ddp.rank0_says(
            budget is not None and time.perf_counter() - t_start >= budget, run.device
        )
        if state.step % cfg.log_steps == 0 or state.step == run.total or out_of_time:
            now = time.perf_counter()
            row = _history_row(state, window, lr=lr, epoch_batches=len(order), now=now,
                               elapsed=state.prev_seconds + now - t_start)  # fmt: skip
            state.history.append(row)
            tracker.log(row, state.step)
            if run.main:
                _show_row(bar, row, run.total)
            window = _Window(now)
        bar.update(1)
        if out_of_time and state.step < run.total:
            state.stopped = (
                f"stopped early by max_minutes={cfg.max_minutes} at step {state.step} of "
                f"{run.total} planned (the schedule was not shortened; resume to continue)"
            )
            log.warning("%s", state.stopped)
            _checkpoint(run, state, seconds())
            break
        if cfg.save_steps and state.step % cfg.save_steps == 0:
            _checkpoint(run, state, seconds())
        if stop_after is not None and state.step >= stop_after:
            bar.close()
            tracker.close()
            return None
    bar.close()
    tracker.close()
    if run.world > 1:
        log.info("rank %d/%d trained %d steps on its rows of each global batch",
                 run.rank, run.world, state.step)  # fmt: skip
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
    """Evaluate on the held-out chunks and write the model directory and the run files
    (rank 0; the other ranks wait and return the same model)."""
    from zhtune.plots import curves_png
    from zhtune.pretrain.model import set_generation_ids
    from zhtune.runs import write_json, write_jsonl, write_manifest

    cfg, out, model, history = run.cfg, run.out, run.model, state.history
    if run.sharding != "none":  # rank 0: a plain model with the gathered full weights
        from zhtune.pretrain.sharding import unsharded

        model = unsharded(model, lambda: build_model(cfg, run.tokenizer).to(run.device), run.main)
    if not run.main:
        ddp.barrier()
        model.eval()
        return PretrainResult(model, run.tokenizer, {}, history)
    scores = evaluate(model, run.held_out, cfg, run.tokenizer, run.device, run.autocast,
                      batch_size=cfg.batch_size * run.world)  # the same masks as 1 process  # fmt: skip
    log.info("held-out: %s", scores)
    model.eval()
    tokenizer = set_generation_ids(model, run.tokenizer, cfg.objective)  # a copy for CLM
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if cfg.objective == "electra":  # the generator's directory is a complete model too
        tokenizer.save_pretrained(out / "generator")
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
    write_manifest(out, f"pretrained-{cfg.objective}", labels=[], objective=cfg.objective,
                   arch=cfg.arch, max_seq_length=cfg.max_seq_length)  # fmt: skip
    finish_run(out, metrics)
    ddp.barrier()
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
        "stopped_early": state.stopped is not None,  # by max_minutes, before the last step
        "stop_reason": state.stopped,
        "stopped_by_time_budget": state.stopped,  # the older name of stop_reason
        "world_size": run.world,
        "global_batch_size": run.global_batch,
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
    if not m:  # not rank 0: rank 0 prints
        return 0
    print(
        f"{m['objective']} ({m['arch']}): {m['steps']} steps, train loss {m['final_train_loss']}, "
        f"held-out loss {m.get('eval_loss')}, accuracy {m.get('eval_accuracy')}, "
        f"perplexity {m.get('perplexity')}, {m['tokens_per_second']} tokens/s"
    )
    if m["objective"] == "electra":
        print(
            f"discriminator: accuracy {m['discriminator_accuracy']}, AUC {m['discriminator_auc']}"
        )
    if m.get("stopped_early"):
        print(f"note: {m['stop_reason']}")
    print(f"\nmodel directory: {ns.out}")
    return 0
