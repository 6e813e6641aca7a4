"""Documents longer than the model's window: ``--long-text truncate|head-tail|chunks``.

* ``truncate``: the first ``max_length`` tokens (what most toolkits do).
* ``head-tail``: the first quarter and the last three quarters of the window's budget
  (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": head+tail was the best
  truncation for long news).
* ``chunks``: windows of ``max_length`` tokens (special tokens included) that overlap by
  ``stride`` tokens and cover the whole document; training sees every window with its
  document's label, prediction pools the windows' logits (``mean`` or ``max``) into one row.

The strategy, stride and pooling are written to the model's ``zhtune.json`` (``long_text``),
so ``predict``, ``evaluate`` and ``serve`` apply it with no flag. One implementation serves
encoders (``zhtune finetune``) and decoder LLMs (``zhtune lora --mode head``): a window is the
text tokens between whatever the tokenizer itself adds to one text ([CLS] ... [SEP] for a BERT
vocabulary, nothing for Qwen2's byte-level BPE, <s> for Llama), so every window looks like a
short text to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zhtune.config import arg, check

STRATEGIES = ("truncate", "head-tail", "chunks")
POOLS = ("mean", "max")
PROBE = "中"


@dataclass
class LongTextConfig:
    """The ``--long-text`` fields; mixed into the configs of ``finetune`` and ``lora``."""

    long_text: str = arg(
        "truncate",
        "texts longer than max_length: keep the start, head-tail (first 1/4 + last 3/4), or "
        "chunks (overlapping windows, pooled; stored in the model)",
        STRATEGIES,
    )
    stride: int = arg(32, "long_text chunks: tokens shared by consecutive windows")
    pool: str = arg("mean", "long_text chunks: pool the windows' logits", POOLS)

    def __post_init__(self) -> None:
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()
        max_length = int(getattr(self, "max_length", 0))
        check(
            self.long_text != "chunks" or 0 <= self.stride < max_length - 2,
            "stride",
            f"must be >= 0 and < max_length - 2 ({max_length - 2}), got {self.stride}",
        )

    def long_text_manifest(self) -> dict:
        """``zhtune.json`` ``long_text`` (empty for ``truncate``: the default needs no entry)."""
        if self.long_text == "truncate":
            return {}
        return {"long_text": {"strategy": self.long_text, "stride": self.stride, "pool": self.pool}}


def specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one text: ([CLS], [SEP]) for a BERT
    vocabulary, ([], []) for Qwen2, ([<s>], []) for Llama; read from the tokenizer itself."""
    inner = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(PROBE)["input_ids"]
    for i in range(len(full) - len(inner) + 1):
        if inner and full[i : i + len(inner)] == inner:
            return list(full[:i]), list(full[i + len(inner) :])
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id  # a tokenizer that rewrites text
    return ([cls] if cls is not None else []), ([sep] if sep is not None else [])


def content_budget(tokenizer: Any, max_length: int) -> int:
    """Tokens of text a window holds: ``max_length`` minus the special tokens ([CLS], [SEP])."""
    first, last = specials(tokenizer)
    return max(1, max_length - len(first) - len(last))


def from_manifest(backend: Any, manifest: dict) -> Any:
    """Set a backend's ``long_text``, ``stride`` and ``pool`` from ``zhtune.json``."""
    long = manifest.get("long_text") or {}
    backend.long_text = str(long.get("strategy", "truncate"))
    backend.stride, backend.pool = int(long.get("stride", 0)), str(long.get("pool", "mean"))
    return backend


def head_tail(ids: Sequence[int], budget: int) -> list[int]:
    """The first ``budget // 4`` and the last ``budget - budget // 4`` tokens (all if short)."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    head = budget // 4
    return ids[:head] + ids[len(ids) - (budget - head) :]


def window_spans(n: int, budget: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of ``budget`` tokens, consecutive spans overlapping by ``stride``,
    the last one ending at ``n`` (it may overlap its predecessor more). One span if short."""
    if n <= budget:
        return [(0, n)]
    step = budget - stride
    starts = list(range(0, n - budget, step)) + [n - budget]
    return [(s, s + budget) for s in starts]


def windows(
    tokenizer: Any,
    ids: Sequence[int],
    max_length: int,
    mode: str,
    stride: int = 0,
    marks: tuple[list[int], list[int]] | None = None,
) -> list[list[int]]:
    """The model inputs (special tokens added) of one document's token ids (without them);
    ``marks``: :func:`specials` of ``tokenizer``, when already known."""
    first, last = marks if marks is not None else specials(tokenizer)
    budget = max(1, max_length - len(first) - len(last))
    ids = list(ids)
    if mode == "chunks":
        parts = [ids[a:b] for a, b in window_spans(len(ids), budget, stride)]
    elif mode == "head-tail":
        parts = [head_tail(ids, budget)]
    else:
        parts = [ids[:budget]]
    return [first + p + last for p in parts]


def encode(
    tokenizer: Any, texts: Sequence[str], max_length: int, mode: str, stride: int = 0
) -> tuple[list[list[int]], np.ndarray]:
    """(model inputs, document index of each input) for ``texts``. User text is text: a
    "[SEP]" or "<|endoftext|>" inside it is not a special token (as in the truncate path)."""
    raw = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False,
                    split_special_tokens=True)["input_ids"]  # fmt: skip
    marks = specials(tokenizer)
    inputs: list[list[int]] = []
    doc: list[int] = []
    for i, ids in enumerate(raw):
        w = windows(tokenizer, ids, max_length, mode, stride, marks)
        inputs += w
        doc += [i] * len(w)
    return inputs, np.asarray(doc, dtype=np.int64)


def pool(logits: np.ndarray, doc: np.ndarray, n_docs: int, how: str = "mean") -> np.ndarray:
    """Per-document logits: the mean or the max of its windows' logits, (n_docs, n_labels)."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.full((n_docs, logits.shape[1]), -np.inf if how == "max" else 0.0)
    if how == "max":
        np.maximum.at(out, doc, logits)
        return out
    np.add.at(out, doc, logits)
    counts = np.bincount(doc, minlength=n_docs).astype(np.float64)
    return out / np.maximum(counts, 1)[:, None]


def predict_logits(backend: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Document logits of a backend with ``long_text``, ``stride``, ``pool``, ``model``,
    ``tokenizer``, ``max_length`` and ``labels`` (:class:`~zhtune.serving.encoder.EncoderBackend`,
    :class:`~zhtune.llm.models.HeadBackend`): every window is run (length-sorted, padded per
    batch on the model's device), then pooled."""
    import torch

    device = getattr(backend, "device", None) or next(backend.model.parameters()).device
    names = getattr(backend, "input_names", ("input_ids", "attention_mask"))
    tok = backend.tokenizer
    inputs, doc = encode(tok, texts, backend.max_length, backend.long_text, backend.stride)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    lengths = np.array([len(x) for x in inputs])
    order = np.argsort(lengths, kind="stable")
    logits = np.zeros((len(inputs), len(backend.labels)), dtype=np.float32)
    with torch.inference_mode():
        for b0 in range(0, len(order), max(1, batch_size)):
            idx = order[b0 : b0 + max(1, batch_size)]
            width = int(lengths[idx].max())
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : lengths[i]] = torch.tensor(inputs[i])
                mask[r, : lengths[i]] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = torch.zeros_like(ids)
            feed = {k: v.to(device) for k, v in feed.items()}
            logits[idx] = backend.model(**feed).logits.float().cpu().numpy()
    return pool(logits, doc, len(texts), backend.pool)


def tokenize_documents(
    texts: Sequence[str],
    targets: Sequence[Any],
    tokenizer: Any,
    max_length: int,
    mode: str,
    stride: int,
):
    """A ``datasets.Dataset`` for the Trainer: one row per window with its document's target
    (an id, or a 0/1 float vector for multi-label), ``attention_mask`` and ``length``."""
    import datasets

    inputs, doc = encode(tokenizer, texts, max_length, mode, stride)
    cols: dict[str, list] = {
        "input_ids": inputs,
        "attention_mask": [[1] * len(x) for x in inputs],
        "labels": [targets[i] for i in doc],
        "length": [len(x) for x in inputs],
    }
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        cols["token_type_ids"] = [[0] * len(x) for x in inputs]
    return datasets.Dataset.from_dict(cols)
