"""Batched PyTorch inference for Hugging Face sequence-classification models."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zhtune.errors import ModelLoadError


def check_safetensors(path: Path, allow_pickle: bool = False) -> None:
    """Refuse a local model directory whose weights are not safetensors."""
    if not path.is_dir():
        return
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{path}: weights are only in pickle files ({', '.join(pickled)}); zhtune loads "
            "safetensors only. Convert them, or pass --allow-pickle if you trust the source."
        )
    if not pickled:
        raise ModelLoadError(f"{path}: no model weights (*.safetensors) found")


def set_threads() -> None:
    """Use the physical cores once; torch's default oversubscribes small machines."""
    import torch

    n = int(os.environ.get("ZHTUNE_THREADS", "0")) or (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class EncoderBackend:
    """AutoModelForSequenceClassification + tokenizer, length-sorted batches, inference mode."""

    def __init__(self, model, tokenizer, max_length: int = 128) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]

    @classmethod
    def load(
        cls,
        path: Path | str,
        allow_pickle: bool = False,
        max_length: int | None = None,
        **_: object,
    ) -> EncoderBackend:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        set_threads()
        local = Path(path)
        check_safetensors(local, allow_pickle)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), use_safetensors=not allow_pickle
            )
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"cannot load {path}: {e}") from None
        max_len = max_length or int(getattr(model.config, "zhtune_max_length", 0) or 128)
        return cls(model, tokenizer, max_len)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self.model(**enc).logits.float()  # (B, n_labels)
                out[idx] = torch.softmax(logits, dim=-1).numpy()
        return out


def load_backend(path: Path | str, manifest: dict, **kw: object) -> EncoderBackend:
    return EncoderBackend.load(path, **kw)  # type: ignore[arg-type]
