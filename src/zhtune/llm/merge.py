"""``zhtune merge``: fold a LoRA adapter into its base model; write a standalone model.

- ``lora-head`` runs (LoRA or ``--freeze-base``) become a plain Hugging Face
  sequence-classification model (``AutoModelForSequenceClassification.from_pretrained``
  works) with ``zhtune.json`` kind ``lora-head`` and ``standalone: true``. (Not kind
  ``encoder``: transformers 5 ``AutoTokenizer`` reads the Chinese BERT vocabulary of a qwen2
  directory as a Qwen2 byte-level tokenizer; the ``lora-head`` loader honours the declared
  tokenizer class.)
- ``scoring`` runs become a standalone causal LM with ``zhtune.json`` kind ``scoring``
  (template and label words kept).

QLoRA adapters are merged into the *full-precision* base (merging into 4-bit weights would
round the update away); its outputs differ from the 4-bit model by the quantization error.
The merge checks itself: the maximum absolute logit difference between adapter + base and
the merged model on a few probe texts is printed and stored in ``zhtune.json``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zhtune.config import add_config_args, arg, check, config_from_args
from zhtune.errors import ModelLoadError
from zhtune.runs import prepare_out_dir, read_manifest, write_manifest

log = logging.getLogger("zhtune")

PROBES = ["质量很好，物流也快", "完全不能用，失望", "一般般吧", "这本书写得真好，推荐给大家"]


@dataclass
class MergeConfig:
    """Merge a LoRA run directory into a standalone model."""

    model: str = arg("", "a zhtune lora run directory (kind lora-head or scoring)")
    base_model: str | None = arg(None, "base model directory (default: the one in zhtune.json)")

    def __post_init__(self) -> None:
        check(bool(self.model.strip()), "model", "give --model RUN_DIR (a zhtune lora output)")


def _logits(model, tokenizer, manifest: dict) -> np.ndarray:
    """Head logits (N, C), or label-word class scores (N, C) for scoring models."""
    import torch

    from zhtune.llm.models import HeadBackend, scorer_from_manifest

    if manifest["kind"] == "scoring":
        return scorer_from_manifest(tokenizer, manifest).predict_scores(model, PROBES, 8)
    backend = HeadBackend(model, tokenizer, list(manifest["labels"]), 64)
    with torch.inference_mode():
        enc = tokenizer(PROBES, padding=True, return_tensors="pt", return_token_type_ids=False)
        return backend.model(**enc).logits.double().numpy()


def merge(cfg: MergeConfig, out: str | Path) -> dict:
    """Write the merged model into ``out``; returns its zhtune.json."""
    from zhtune.llm.models import load_tuned

    src = Path(cfg.model)
    manifest = read_manifest(src) if src.is_dir() else None
    if manifest is None or manifest["kind"] not in ("lora-head", "scoring"):
        raise ModelLoadError(
            f"{src}: not a zhtune lora/zero-shot run (zhtune.json kind lora-head or scoring)"
        )
    if manifest.get("standalone"):
        raise ModelLoadError(f"{src}: already a standalone (merged) model")
    out = prepare_out_dir(out)
    # full precision: merge the adapter (also a QLoRA one) into the fp32 base weights
    full = {**manifest, "qlora": False}
    model, tok = load_tuned(src, full, cfg.base_model, for_training=True)
    reference = _logits(model, tok, full)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    merged = _logits(model, tok, full)
    diff = float(np.abs(reference - merged).max())
    if manifest["kind"] == "lora-head":
        model.config.zhtune_max_length = int(manifest.get("max_length", 128))
    model.save_pretrained(out)  # safetensors
    tok.save_pretrained(out)
    keep = {k: v for k, v in manifest.items() if k not in ("kind", "labels", "zhtune_version")}
    kind = manifest["kind"]
    extra = {**keep, "standalone": True, "merged_from": str(src.resolve()),
             "merge_max_abs_diff": diff}  # fmt: skip
    write_manifest(out, kind, list(manifest["labels"]), **extra)
    log.info("merged %s into %s (max |logit difference| %.2e)", src, out, diff)
    return {"kind": kind, **extra}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the merged model")
    add_config_args(parser, MergeConfig)


def run_cli(ns: argparse.Namespace) -> int:
    info = merge(config_from_args(MergeConfig, ns), ns.out)
    print(
        f"merged model ({info['kind']}) in {ns.out}; max |logit difference| vs adapter + base: "
        f"{info['merge_max_abs_diff']:.2e}"
    )
    return 0
