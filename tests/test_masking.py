"""Whole-word masking: whole words, the masked share, never special tokens, 80/10/10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zhtune.pretrain.masking import IGNORE, WholeWordMaskCollator, encode_words, mask_whole_words
from zhtune.text import load_tokenizer

TEXT = "我们喜欢自然语言处理，北京大学的研究很有意思。"
WORDS = ["我们", "喜欢", "自然语言", "处理", "，", "北京大学", "的", "研究", "很", "有意思", "。"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def example(tok):
    return encode_words(TEXT, tok, words=WORDS)


def test_encoding_follows_the_segmentation(tok, example):
    ids, wids = example
    assert wids[0] == -1 and wids[-1] == -1  # [CLS], [SEP]
    body = wids[1:-1]
    # one character per token here, so the word sizes are the word lengths, in order
    sizes = [int((body == w).sum()) for w in dict.fromkeys(body.tolist())]
    assert sizes == [len(w) for w in WORDS]


def test_every_word_masked_whole_or_not_at_all(tok, example):
    collate = WholeWordMaskCollator(tok, mask_prob=0.3, seed=1)
    ids, wids = example
    n_partial = n_chosen = 0
    for _ in range(300):
        batch = collate([example, example])
        for row in range(2):
            chosen = (batch["labels"][row] != IGNORE).numpy()
            for w in set(wids.tolist()) - {-1}:
                part = chosen[wids == w]
                n_chosen += int(part.all())
                n_partial += int(part.any() and not part.all())
            # labels hold the original tokens
            assert (batch["labels"][row][chosen].numpy() == ids[chosen]).all()
    assert n_partial == 0 and n_chosen > 0


def _random_batch(n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random word segmentations with [CLS]/[SEP] and right padding."""
    rng = np.random.default_rng(seed)
    ids = torch.zeros((n, T), dtype=torch.long)
    wids = torch.full((n, T), -1, dtype=torch.long)
    for b in range(n):
        length = int(rng.integers(5, T + 1))
        sizes = rng.integers(1, 5, size=length)
        body = np.repeat(np.arange(length), sizes)[: length - 2]
        ids[b, :length] = torch.as_tensor(rng.integers(1000, 20000, size=length))
        ids[b, 0], ids[b, length - 1] = 101, 102
        wids[b, 1 : length - 1] = torch.as_tensor(body)
    return ids, wids, wids >= 0


def test_masked_share_and_special_tokens_untouched(tok):
    g = torch.Generator().manual_seed(0)
    random_ids = torch.arange(1000, 20000)
    chosen_total = maskable_total = 0
    kinds = np.zeros(3)
    for seed in range(40):
        ids, wids, maskable = _random_batch(32, 64, seed)
        out, labels = mask_whole_words(ids, wids, 0.15, tok.mask_token_id, random_ids, g)
        chosen = labels != IGNORE
        assert not chosen[~maskable].any()  # [CLS], [SEP], padding: never chosen
        assert (out[~maskable] == ids[~maskable]).all()  # ... and never changed
        chosen_total += int(chosen.sum())
        maskable_total += int(maskable.sum())
        kinds += [
            int((out[chosen] == tok.mask_token_id).sum()),
            int(((out[chosen] != tok.mask_token_id) & (out[chosen] != ids[chosen])).sum()),
            int((out[chosen] == ids[chosen]).sum()),
        ]
    assert abs(chosen_total / maskable_total - 0.15) < 0.01
    share = kinds / kinds.sum()  # [MASK], random token, unchanged
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.02 and abs(share[2] - 0.1) < 0.02


def test_collator_pads_per_batch_and_never_masks_padding(tok, example):
    short = encode_words("很好。", tok)
    collate = WholeWordMaskCollator(tok, seed=0)
    batch = collate([example, short])
    assert batch["input_ids"].shape == (2, len(example[0]))  # padded to the longest
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["input_ids"][pad] == tok.pad_token_id).all()
    assert (batch["labels"][pad] == IGNORE).all()
    # random replacements are ordinary tokens
    assert not set(tok.all_special_ids) & set(collate.random_ids.tolist())


def test_same_seed_same_masks(tok, example):
    a = WholeWordMaskCollator(tok, seed=5)([example] * 4)
    b = WholeWordMaskCollator(tok, seed=5)([example] * 4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_bad_mask_prob(tok):
    with pytest.raises(ValueError, match="mask_prob"):
        WholeWordMaskCollator(tok, mask_prob=1.5)
