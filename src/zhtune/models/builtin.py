"""Shipping a pretrained model as a built-in base (``--model builtin:NAME``).

A shipped model is a folder ``src/zhtune/assets/models/NAME/`` (package data) holding:

- the Hugging Face model (``config.json``, ``model.safetensors``, fp32 or fp16) and tokenizer;
- ``pretrain-config.yaml`` (the preset that made it), ``command.txt`` (the exact command);
- ``history.jsonl`` and ``loss_curve.png`` (the training curve), ``metrics.json``: steps,
  training seconds, the held-out loss recorded at shipping time (``heldout_sample``) and the
  unigram loss level of the corpus, for comparison;
- ``heldout.npz``: a sample of the run's held-out chunks (token ids), so the held-out loss
  can be recomputed anywhere (:func:`heldout_loss`; ``tests/test_builtin_models.py``);
- ``SHA256SUMS``: every other file's sha256, checked by :func:`zhtune.runs.resolve_model`.

Ship one (maintainers) from a ``zhtune pretrain`` run directory or one of its checkpoints::

    python -m zhtune.models.builtin RUN_DIR[/checkpoints/step-N] NAME --fp16 \
        --command "zhtune pretrain ..."      # run where the corpus paths in config.yaml resolve
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.errors import ZhtuneError
from zhtune.runs import BUILTIN_MODELS_DIR, SHA256SUMS, write_json
from zhtune.training.checkpoints import STATE_FILE

HELDOUT_CHUNKS = 200  # held-out chunks shipped with a model (of the run's 1,000)


def _run_dir(source: Path) -> Path:
    """The run directory of ``source`` (a run directory, or RUN/checkpoints/step-N)."""
    for d in (source, source.parent.parent):
        if (d / "config.yaml").is_file():
            return d
    raise ZhtuneError(f"{source}: no config.yaml here or two levels up (not a pretraining run)")


def load_source(source: Path) -> tuple[Any, Any, Any]:
    """(model, tokenizer, PretrainConfig) of a pretraining run directory or checkpoint."""
    from safetensors.torch import load_model

    from zhtune.config import load_config
    from zhtune.pretrain.loop import PretrainConfig
    from zhtune.pretrain.model import build_model
    from zhtune.text import load_tokenizer

    cfg = load_config(PretrainConfig, _run_dir(source) / "config.yaml")
    tokenizer = load_tokenizer(cfg.tokenizer_path)
    model = build_model(cfg, tokenizer)
    weights = source / "model.safetensors"
    if not weights.is_file():
        raise ZhtuneError(f"{source}: no model.safetensors")
    load_model(model, str(weights), strict=False)
    return model.float().eval(), tokenizer, cfg


def unigram_loss(chunks: Any) -> float:
    """Cross-entropy of the corpus's own token frequencies (non-special tokens): the loss a
    model that ignores the context reaches. A useful MLM is clearly below it."""
    ids = chunks.ids[chunks.wids >= 0]
    counts = np.bincount(ids).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return round(float(-(p * np.log(p)).sum()), 4)


def heldout_loss(folder: str | Path) -> dict:
    """Held-out loss of a shipped model on its ``heldout.npz``, fp32 on CPU, seeded masks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from zhtune.config import load_config
    from zhtune.pretrain.corpus import Chunks
    from zhtune.pretrain.loop import PretrainConfig
    from zhtune.pretrain.model import evaluate
    from zhtune.text import load_tokenizer

    folder = Path(folder)
    cfg = load_config(PretrainConfig, folder / "pretrain-config.yaml")
    with np.load(folder / "heldout.npz", allow_pickle=False) as z:
        chunks = Chunks(z["ids"], z["wids"], z["starts"])
    auto = AutoModelForMaskedLM if cfg.objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    tokenizer = load_tokenizer(str(folder))
    torch.manual_seed(0)
    return evaluate(model, chunks, cfg, tokenizer, torch.device("cpu"), contextlib.nullcontext)


def _held_out_sample(cfg: Any, tokenizer: Any) -> Any:
    """The first ``HELDOUT_CHUNKS`` of the run's held-out chunks (the corpus is re-read)."""
    from zhtune.pretrain.corpus import load_corpus

    train, held, _ = load_corpus(cfg, tokenizer)
    return train, held.subset(np.arange(min(HELDOUT_CHUNKS, len(held))))


def _history(run: Path, step: int | None) -> list[dict]:
    f = run / "history.jsonl"
    if not f.is_file():  # a checkpoint of a run still training: history is in its state
        state = run / "checkpoints" / f"step-{step:08d}" / STATE_FILE if step else None
        data = json.loads(state.read_text(encoding="utf-8")) if state and state.is_file() else {}
        return list(data.get("history", []))
    return [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]


def _earlier_stages(cfg: Any) -> tuple[list[dict], list[dict], Any]:
    """A run continued from a shipped model (``init_from``): that model's stages (its
    ``metrics.json`` ``stages``, or itself as one stage), its history and its preset."""
    from zhtune.config import load_config
    from zhtune.pretrain.loop import PretrainConfig

    base = Path(cfg.init_from) if cfg.init_from else None
    if base is None or not (base / "metrics.json").is_file():
        return [], [], None
    m = json.loads((base / "metrics.json").read_text(encoding="utf-8"))
    stages = m.get("stages") or [
        {k: m.get(k) for k in ("steps", "train_seconds", "unigram_loss", "heldout_sample")}
        | {"preset": "pretrain-config.stage1.yaml"}
    ]
    earlier = load_config(PretrainConfig, base / "pretrain-config.yaml")
    return stages, _history(base, None), earlier


def ship_model(
    source: str | Path, name: str, command: str, fp16: bool = False, root: Path | None = None
) -> Path:
    """Write ``root/NAME`` (default: the package's models folder) from a pretraining run."""
    import torch

    from zhtune.config import save_config
    from zhtune.plots import curves_png
    from zhtune.runs import verify_sha256

    source = Path(source)
    model, tokenizer, cfg = load_source(source)
    step = int(source.name.split("-")[-1]) if source.name.startswith("step-") else None
    dest = (root or BUILTIN_MODELS_DIR) / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    stages, earlier_history, earlier_cfg = _earlier_stages(cfg)
    train, held = _held_out_sample(cfg, tokenizer)
    np.savez_compressed(dest / "heldout.npz", ids=held.ids, wids=held.wids, starts=held.starts)
    if fp16:
        model = model.to(torch.float16)
    model.save_pretrained(dest, safe_serialization=True)
    if fp16:  # stored in fp16, loaded in fp32: dtype "auto" reads config.json's dtype
        conf = json.loads((dest / "config.json").read_text(encoding="utf-8"))
        conf["dtype"] = "float32"
        (dest / "config.json").write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(dest)
    if earlier_cfg is not None:  # continued from a shipped model: its preset is stage 1
        save_config(earlier_cfg, dest)
        (dest / "config.yaml").rename(dest / "pretrain-config.stage1.yaml")
        cfg.init_from = None  # (its folder is this one's predecessor; stage 1 records it)
    save_config(cfg, dest)
    (dest / "config.yaml").rename(dest / "pretrain-config.yaml")
    (dest / "command.txt").write_text(command.strip() + "\n", encoding="utf-8")
    history = _history(_run_dir(source), step)
    offset = earlier_history[-1]["step"] if earlier_history else 0
    history = earlier_history + [{**r, "step": r["step"] + offset} for r in history]
    (dest / "history.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in history), encoding="utf-8"
    )
    if history:
        curves_png(
            {"train loss": ([r["step"] for r in history], [r["loss"] for r in history])},
            dest / "loss_curve.png",
            xlabel="step",
            ylabel="loss",
            title=f"{name}: {cfg.objective.upper()} pretraining loss",
        )
    last = history[-1] if history else {}
    if stages:
        history_steps = (last.get("step") or 0) - offset
        stages = [*stages, {"steps": step or history_steps,
                            "train_seconds": last.get("elapsed_seconds"),
                            "preset": "pretrain-config.yaml"}]  # fmt: skip
    run_metrics = _run_dir(source) / "metrics.json"
    final = json.loads(run_metrics.read_text(encoding="utf-8")) if run_metrics.is_file() else {}
    write_json(
        dest / "metrics.json",
        {
            "name": name,
            "objective": cfg.objective,
            "steps": sum(st["steps"] or 0 for st in stages)
            if stages
            else (step or last.get("step")),
            "train_seconds": sum(st["train_seconds"] or 0 for st in stages)
            if stages
            else last.get("elapsed_seconds"),
            "stages": stages or None,  # continued pretraining: one entry per run
            "dtype": "float16" if fp16 else "float32",
            "unigram_loss": unigram_loss(train),
            "heldout_sample": heldout_loss(dest),
            # the run's own held-out evaluation (all its held-out chunks), when it finished
            "run_eval": {
                k: final[k]
                for k in ("eval_loss", "eval_accuracy", "perplexity", "tokens_per_second")
                if k in final
            }
            or None,
        },
    )
    files = sorted(p.name for p in dest.iterdir() if p.is_file() and p.name != SHA256SUMS)
    (dest / SHA256SUMS).write_text(
        "".join(f"{hashlib.sha256((dest / f).read_bytes()).hexdigest()}  {f}\n" for f in files),
        encoding="utf-8",
    )
    verify_sha256(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ship a pretraining run as a built-in base model")
    p.add_argument("source", help="pretraining run directory or RUN/checkpoints/step-N")
    p.add_argument("name", help="the built-in name (--model builtin:NAME)")
    p.add_argument("--command", required=True, help="the exact command that made it")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16")
    p.add_argument("--root", help="models folder (default: the package's assets/models)")
    ns = p.parse_args(argv)
    dest = ship_model(ns.source, ns.name, ns.command, ns.fp16, Path(ns.root) if ns.root else None)
    print(json.dumps(json.loads((dest / "metrics.json").read_text(encoding="utf-8")), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
