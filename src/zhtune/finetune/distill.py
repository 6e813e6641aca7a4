"""``zhtune distill``: train an encoder student on a teacher's soft labels.

The teacher is any run ``Classifier.load`` reads (an ensemble included). Its probabilities
on the student's training texts (the train split, its ``--augment`` copies and the
``--unlabeled`` texts) are computed once and cached in ``OUT/teacher_probs.safetensors``
(reused when the teacher, its manifest and the texts are the same, e.g. on resume).

Loss on a batch of N rows (hard label y_i, or none for an unlabeled text)::

    (1/N) sum_i [ alpha * T^2 * KL(p_T,i || q_T,i)  +  (1 - alpha) * CE(q_i, y_i) [y_i given] ]

with ``p_T = softmax(log p_teacher / T)`` and ``q_T = softmax(logits / T)`` (Hinton et al.,
2015; T^2 keeps the soft gradients on the scale of the hard ones). The run directory is an
ordinary ``encoder`` run (``zhtune export`` / ``serve`` work) and records the teacher, its
accuracy and texts/s, and the student's, in ``metrics.json`` and ``distill.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.config import add_config_args, arg, check, config_from_args, save_config
from zhtune.data import Split, Splits, load_splits, read_file
from zhtune.errors import ZhtuneError
from zhtune.finetune.augment import augment_splits
from zhtune.finetune.encoder import (
    FinetuneConfig,
    build_model,
    check_resume_matches,
    load_tokenizer_for,
)
from zhtune.runs import prepare_out_dir, read_manifest, write_json, write_manifest

log = logging.getLogger("zhtune")
CACHE_FILE = "teacher_probs.safetensors"


@dataclass
class DistillConfig(FinetuneConfig):
    """Distil a teacher run into an encoder student (every finetune option applies)."""

    model: str = arg(
        "none", "student: model directory or hub id; 'none' = a randomly initialised tiny RoBERTa"
    )
    teacher: str = arg("", "teacher run directory (any kind, an ensemble too)")
    temperature: float = arg(2.0, "softmax temperature T of the soft-label KL term")
    alpha: float = arg(0.5, "weight of the soft-label (KL) term; 1 - alpha weighs the hard labels")
    unlabeled: str | None = arg(
        None, "extra unlabeled texts for the soft labels (.txt one a line, or csv/jsonl)"
    )
    max_unlabeled: int | None = arg(None, "use at most this many unlabeled texts")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.teacher.strip()), "teacher", "give --teacher RUN_DIR")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(0 <= self.alpha <= 1, "alpha", f"must be in [0, 1], got {self.alpha}")
        check(
            self.max_unlabeled is None or self.max_unlabeled >= 1, "max_unlabeled", "must be >= 1"
        )


def distill_loss(
    logits: Any, teacher_probs: Any, labels: Any, temperature: float, alpha: float
) -> Any:
    """The loss above on one batch; ``labels`` < 0 marks a row with no hard label.

    Returns the sum over rows (divide by N for the mean)."""
    import torch
    import torch.nn.functional as F

    t = float(temperature)
    logits = logits.float()
    p_t = F.softmax(torch.log(teacher_probs.float().clamp_min(1e-12)) / t, dim=-1)
    log_q_t = F.log_softmax(logits / t, dim=-1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_q_t)).sum(-1)  # (N,)
    has = labels >= 0
    ce = torch.zeros_like(kl)
    if has.any():
        ce[has] = F.cross_entropy(logits[has], labels[has].long(), reduction="none")
    return (alpha * t * t * kl + (1 - alpha) * ce).sum()


def make_distill_loss_fn(cfg: DistillConfig) -> Any:
    """A ``compute_loss_func``: train rows carry ``labels`` = [hard label or -1, p_1..p_K];
    dev rows carry plain label ids (their loss is cross-entropy)."""
    import torch.nn.functional as F

    def compute_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if labels.dim() == 1:
            return F.cross_entropy(logits.float(), labels)
        total = distill_loss(logits, labels[:, 1:], labels[:, 0], cfg.temperature, cfg.alpha)
        rows = (
            labels.shape[0] if num_items_in_batch is None else num_items_in_batch / labels.shape[1]
        )
        return total / rows

    return compute_loss


# --- teacher probabilities, computed once ----------------------------------------------
def teacher_probs(
    teacher: Any, teacher_dir: Path, texts: list[str], out: Path, batch_size: int
) -> np.ndarray:
    """The teacher's probabilities on ``texts``, from the cache in ``out`` when it matches."""
    from safetensors.numpy import load_file, save_file

    h = hashlib.sha256(str(teacher_dir.resolve()).encode())
    h.update((teacher_dir / "zhtune.json").read_bytes())
    h.update("\n".join(texts).encode())
    key = h.hexdigest()
    meta = out / "teacher_probs.json"
    cached = meta.is_file() and (out / CACHE_FILE).is_file()
    if cached and json.loads(meta.read_text(encoding="utf-8")).get("key") == key:
        log.info("distill: teacher probabilities from the cache %s", out / CACHE_FILE)
        return load_file(str(out / CACHE_FILE))["probs"]
    log.info(
        "distill: scoring %d texts with the teacher (cached in %s)", len(texts), out / CACHE_FILE
    )
    probs = np.ascontiguousarray(
        teacher.predict_proba(texts, batch_size=batch_size), dtype=np.float32
    )
    save_file({"probs": probs}, str(out / CACHE_FILE))
    write_json(meta, {"key": key, "teacher": str(teacher_dir.resolve()), "n": len(texts)})
    return probs


def read_unlabeled(cfg: DistillConfig, splits: Splits) -> tuple[list[str], dict]:
    """Unlabeled texts, minus any that is a dev or test text (no leakage)."""
    if not cfg.unlabeled:
        return [], {}
    rows = read_file(cfg.unlabeled, cfg.text_column, cfg.label_column, need_label=False)
    held_out = set(splits.dev.texts) | set(splits.test.texts)
    texts = list(dict.fromkeys(r.text for r in rows if r.text not in held_out))
    if cfg.max_unlabeled:
        texts = texts[: cfg.max_unlabeled]
    info = {"file": cfg.unlabeled, "rows_read": len(rows), "used": len(texts),
            "dropped_as_dev_or_test": sum(r.text in held_out for r in rows)}  # fmt: skip
    return texts, info


def build_train_set(cfg: DistillConfig, splits: Splits, unlabeled: list[str], probs: np.ndarray,
                    tokenizer: Any) -> Any:  # fmt: skip
    from zhtune.training.trainer import tokenize_split

    lmap = splits.label_map
    texts = [*splits.train.texts, *unlabeled]
    hard = [*splits.train.label_ids(lmap), *([-1] * len(unlabeled))]
    placeholder = Split(texts, [lmap.names[0]] * len(texts))
    ds = tokenize_split(placeholder, lmap, tokenizer, cfg.max_length).remove_columns("labels")
    packed = np.concatenate([np.asarray(hard, dtype=np.float32)[:, None], probs], axis=1)
    return ds.add_column("labels", packed.tolist())


# --- the command -------------------------------------------------------------------------
def _load_teacher(cfg: DistillConfig, labels: list[str]) -> tuple[Any, Path]:
    from zhtune.classifier import Classifier
    from zhtune.evaluation.scoring import check_labels

    tdir = Path(cfg.teacher).expanduser()
    if not tdir.is_dir() or read_manifest(tdir) is None:
        raise ZhtuneError(f"--teacher {cfg.teacher}: not a zhtune run directory (no zhtune.json)")
    teacher = Classifier.load(tdir)
    check_labels(teacher.labels, labels, f"--teacher {cfg.teacher}")
    return teacher, tdir


def run_distill(cfg: DistillConfig, out: str | Path) -> dict:
    """Score the texts with the teacher, train the student, score both on test."""
    from zhtune.classifier import Classifier
    from zhtune.device import set_threads
    from zhtune.evaluation.scoring import score, write_test_outputs
    from zhtune.training.trainer import count_parameters, free_memory, run_trainer, tokenize_split

    set_threads()
    out = prepare_out_dir(out)
    check_resume_matches(cfg, out)
    save_config(cfg, out)
    splits = augment_splits(load_splits(cfg), cfg)  # train rows only
    labels = list(splits.label_map.names)
    teacher, tdir = _load_teacher(cfg, labels)
    unlabeled, un_info = read_unlabeled(cfg, splits)
    write_json(out / "data.json", {**splits.report, "unlabeled": un_info or None})
    probs = teacher_probs(teacher, tdir, [*splits.train.texts, *unlabeled], out, cfg.eval_bs)
    teacher_m, _ = score(teacher, splits.test, labels, cfg.eval_bs)
    del teacher
    free_memory()
    tokenizer = load_tokenizer_for(cfg)
    model = build_model(cfg, labels, tokenizer)
    params = count_parameters(model)
    train_ds = build_train_set(cfg, splits, unlabeled, probs, tokenizer)
    dev_ds = tokenize_split(splits.dev, splits.label_map, tokenizer, cfg.max_length)
    log.info("distill %s -> student %s (%d parameters): %d labelled + %d unlabeled texts, T=%g, alpha=%g",
             cfg.teacher, cfg.model, params, len(splits.train), len(unlabeled), cfg.temperature, cfg.alpha)  # fmt: skip
    result = run_trainer(model, train_ds, dev_ds, cfg, out, labels, tokenizer=tokenizer,
                         loss_fn=make_distill_loss_fn(cfg))  # fmt: skip
    best = result.model
    best.config.zhtune_max_length = cfg.max_length
    best.save_pretrained(out)
    tokenizer.save_pretrained(out)
    teacher_info = {"path": str(tdir.resolve()), "kind": read_manifest(tdir)["kind"],  # type: ignore[index]
                    "accuracy": teacher_m["accuracy"], "macro_f1": teacher_m["macro_f1"],
                    "texts_per_second": teacher_m["texts_per_second"]}  # fmt: skip
    write_manifest(out, "encoder", labels, base_model=cfg.model, max_length=cfg.max_length,
                   distilled_from=teacher_info["path"])  # fmt: skip
    result.model = None
    del model, best
    free_memory()
    clf = Classifier.load(out)
    extra = {"model": f"distill:{Path(cfg.model).name or cfg.model}<-{tdir.name}",
             "train_seconds": result.train_seconds, "parameters": params, "steps": result.global_step,
             "teacher": teacher_info, "temperature": cfg.temperature, "alpha": cfg.alpha}  # fmt: skip
    metrics = write_test_outputs(clf, splits, out, extra=extra, batch_size=cfg.eval_bs)
    write_json(out / "distill.json", {"teacher": teacher_info, "student": {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "texts_per_second": metrics["texts_per_second"], "parameters": params},
        "speedup": metrics["texts_per_second"] / max(teacher_info["texts_per_second"], 1e-9),
        "soft_label_texts": len(probs), "unlabeled_texts": len(unlabeled)})  # fmt: skip
    from zhtune.training.tracking import finish_run

    finish_run(out, metrics)
    return metrics


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="student run directory to write")
    p.add_argument("--student-config", default=None, metavar="YAML",
                   help="a finetune preset for the student (e.g. configs/finetune-tiny.yaml); same as --config")  # fmt: skip
    add_config_args(p, DistillConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import format_table

    if ns.student_config:
        ns.config = ns.student_config
    m = run_distill(config_from_args(DistillConfig, ns), ns.out)
    t = m["teacher"]
    rows = [{"model": f"teacher ({t['kind']})", "accuracy": t["accuracy"], "macro_f1": t["macro_f1"],
             "texts_per_second": t["texts_per_second"]}, m]  # fmt: skip
    print(format_table(rows, [("model", "model"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
                              ("texts_per_second", "texts/s")]))  # fmt: skip
    print(f"\nrun directory: {ns.out}")
    return 0
