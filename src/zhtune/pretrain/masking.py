"""Whole-word masking for Chinese MLM pretraining (a small, readable collator).

Words come from jieba (``zhtune.text.word_ids``); every token carries the id of its word
(``-1`` for special and padding tokens). Each word is chosen independently with probability
``mask_prob``, so on average exactly ``mask_prob`` of the maskable tokens are chosen, and a
chosen word has all of its tokens chosen together. Of the chosen tokens, 80% become
``[MASK]``, 10% a random (non-special) token and 10% stay as they are (BERT's recipe,
decided per token). Labels are ``-100`` everywhere except at the chosen tokens.

Transformers 5 removed ``DataCollatorForWholeWordMask``; this module replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE = -100  # label of a position that is not predicted (F.cross_entropy's ignore_index)


def boundary_ids(tokenizer) -> tuple[int | None, int | None]:
    """The ids that open and close a chunk: ``[CLS]``/``[SEP]`` (BERT vocabularies), else
    bos/eos (byte-level BPE: Qwen2 has no bos, so a chunk is ``text <|endoftext|>``)."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return start, end


def pad_id(tokenizer) -> int:
    """The padding id; a tokenizer without one pads with its end token (as decoders do)."""
    pid = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else boundary_ids(tokenizer)[1]
    )
    if pid is None:
        from zhtune.errors import ConfigError

        name = type(tokenizer).__name__
        raise ConfigError(f"tokenizer_path: {name} has no pad, [SEP] or eos token to pad with")
    return int(pid)


def encode_words(text: str, tokenizer, words: list[str] | None = None, max_length: int = 512):
    """Token ids of ``text`` with special tokens and compact word ids (``-1`` = special).

    ``words`` gives the segmentation (default: jieba's).
    """
    from zhtune.text import word_ids

    ids, wids = word_ids(text, tokenizer, words, truncation=True, max_length=max_length)
    return np.asarray(ids, dtype=np.int64), compact_word_ids(wids)


def compact_word_ids(wids: Sequence[int | None] | np.ndarray) -> np.ndarray:
    """Renumber word ids to 0..W-1 (any order); ``None`` and negatives become -1."""
    if isinstance(wids, np.ndarray):
        arr = wids.astype(np.int64)
    else:
        arr = np.asarray([-1 if w is None else w for w in wids], dtype=np.int64)
    keep = arr >= 0
    out = np.full(arr.shape, -1, dtype=np.int64)
    if keep.any():
        out[keep] = np.unique(arr[keep], return_inverse=True)[1]
    return out


def pad_batch(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int, pad_to_multiple_of: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``(ids, word_ids)`` pairs to the longest in the batch (right padding).

    Returns ``input_ids`` (B, T), ``word_ids`` (B, T) with -1 at padding, and
    ``attention_mask`` (B, T).
    """
    longest = max(len(ids) for ids, _ in examples)
    T = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    word_ids = torch.full((B, T), -1, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (ids, wids) in enumerate(examples):
        n = len(ids)
        input_ids[i, :n] = torch.as_tensor(ids, dtype=torch.long)
        word_ids[i, :n] = torch.as_tensor(wids, dtype=torch.long)
        attention_mask[i, :n] = 1
    return input_ids, word_ids, attention_mask


def mask_whole_words(
    input_ids: torch.Tensor,
    word_ids: torch.Tensor,
    mask_prob: float,
    mask_id: int,
    random_ids: torch.Tensor,
    generator: torch.Generator,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking of a padded batch.

    input_ids, word_ids: (B, T); word_ids[b, t] = -1 means never mask (special, padding).
    Returns the corrupted ``input_ids`` (B, T) and ``labels`` (B, T), -100 where not chosen.
    """
    B, T = input_ids.shape
    W = int(word_ids.max().item()) + 1 if word_ids.numel() else 0
    # one draw per word; the extra column W stands for "no word" and is never chosen
    chosen_word = torch.rand((B, W + 1), generator=generator) < mask_prob  # (B, W+1)
    chosen_word[:, W] = False
    wid = torch.where(word_ids >= 0, word_ids, torch.full_like(word_ids, W))  # (B, T)
    chosen = chosen_word.gather(1, wid)  # (B, T): every token of a chosen word
    if not chosen.any() and (word_ids >= 0).any():
        # rare (short texts): choose one word so the batch has something to predict
        rows, cols = torch.nonzero(word_ids >= 0, as_tuple=True)
        k = int(torch.randint(len(rows), (1,), generator=generator).item())
        b = rows[k]
        chosen[b] = word_ids[b] == word_ids[b, cols[k]]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))  # (B, T)

    r = torch.rand((B, T), generator=generator)  # one draw per token decides its fate
    to_mask = chosen & (r < mask_replace_prob)
    to_random = chosen & (r >= mask_replace_prob) & (r < mask_replace_prob + random_replace_prob)
    out = input_ids.clone()
    out[to_mask] = mask_id
    n_random = int(to_random.sum().item())
    if n_random:
        pick = torch.randint(len(random_ids), (n_random,), generator=generator)
        out[to_random] = random_ids[pick]
    return out, labels


class WholeWordMaskCollator:
    """Turn ``(ids, word_ids)`` examples into an MLM batch with whole-word masking.

    ``collator(examples)`` -> ``{"input_ids", "attention_mask", "labels"}``, each (B, T),
    padded to the longest example of the batch. The random state lives in
    ``self.generator`` (a ``torch.Generator``), so it can be saved and restored exactly.
    """

    def __init__(
        self,
        tokenizer,
        mask_prob: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if mask_replace_prob + random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        self.mask_prob = mask_prob
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_id = pad_id(tokenizer)
        self.mask_id = tokenizer.mask_token_id
        special = set(tokenizer.all_special_ids)
        # random replacements are ordinary tokens (not [PAD], [CLS], [MASK], ...)
        self.random_ids = torch.tensor(
            [i for i in range(len(tokenizer)) if i not in special], dtype=torch.long
        )
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
        input_ids, word_ids, attention_mask = pad_batch(
            examples, self.pad_id, self.pad_to_multiple_of
        )
        input_ids, labels = mask_whole_words(
            input_ids,
            word_ids,
            self.mask_prob,
            self.mask_id,
            self.random_ids,
            self.generator,
            self.mask_replace_prob,
            self.random_replace_prob,
        )
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class CausalCollator:
    """Pad examples for causal-LM training: ``{"input_ids", "attention_mask"}`` (B, T)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int = 1, seed: int = 0) -> None:
        self.pad_id = pad_id(tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = torch.Generator().manual_seed(seed)  # unused; same interface

    def __call__(self, examples: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
        input_ids, _, attention_mask = pad_batch(examples, self.pad_id, self.pad_to_multiple_of)
        return {"input_ids": input_ids, "attention_mask": attention_mask}
