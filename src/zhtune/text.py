"""Tokenizer loading and Chinese word boundaries (jieba) for whole-word masking."""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path

from zhtune.errors import ModelLoadError

VOCAB_FILE = "chinese-bert-vocab.txt"


def builtin_vocab_path() -> Path:
    """The packaged 21,128-entry Chinese BERT vocabulary (see NOTICE)."""
    return Path(str(resources.files("zhtune") / "assets" / VOCAB_FILE))


def load_tokenizer(path: str | None = None):
    """A fast tokenizer: the built-in Chinese BERT WordPiece vocabulary by default, else any
    Hugging Face tokenizer id or directory (``AutoTokenizer.from_pretrained``)."""
    if path in (None, "", "builtin", "chinese-bert"):
        return _builtin_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {e}") from None


@lru_cache(maxsize=1)
def _builtin_tokenizer():
    from transformers import BertTokenizerFast

    # split on "\n" only: str.splitlines() also splits on U+2028, which is itself a vocab entry
    lines = builtin_vocab_path().read_text(encoding="utf-8").rstrip("\n").split("\n")
    vocab = {tok: i for i, tok in enumerate(lines)}
    return BertTokenizerFast(
        vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True, model_max_length=512
    )


_jieba_ready = False


def segment(text: str) -> list[str]:
    """jieba's word segmentation (precise mode, HMM on)."""
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _jieba_ready = True
    return jieba.lcut(text)


def word_spans(text: str, words: list[str] | None = None) -> list[tuple[int, int]]:
    """Character spans (start, end) of the words of ``text``; whitespace is not a word."""
    words = segment(text) if words is None else words
    spans, pos = [], 0
    for w in words:
        start = text.find(w, pos)
        if start < 0:  # jieba keeps the text intact, so this does not happen; be safe
            continue
        pos = start + len(w)
        if w.strip():
            spans.append((start, pos))
    return spans


def word_ids_from_offsets(
    offsets: list[tuple[int, int]], spans: list[tuple[int, int]], special: list[bool] | None = None
) -> list[int | None]:
    """Map each token (given its character offsets) to the index of the word it belongs to.

    Tokens of one jieba word (several Chinese characters, or WordPiece ``##`` pieces of one
    word) share an id; special and padding tokens get ``None``.
    """
    out: list[int | None] = []
    w = 0
    for i, (s, e) in enumerate(offsets):
        if (special and special[i]) or s == e:
            out.append(None)
            continue
        while w < len(spans) and spans[w][1] <= s:
            w += 1
        out.append(w if w < len(spans) and spans[w][0] <= s else (len(spans) + i))
    return out


def word_ids(
    text: str, tokenizer, words: list[str] | None = None, **encode_kw
) -> tuple[list[int], list[int | None]]:
    """Token ids of ``text`` (with special tokens) and the word id of each token."""
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, **encode_kw)
    ids = enc["input_ids"]
    wids = word_ids_from_offsets(
        enc["offset_mapping"],
        word_spans(text, words),
        [bool(m) for m in enc["special_tokens_mask"]],
    )
    return ids, wids


def word_starts(text: str, tokenizer, words: list[str] | None = None, **encode_kw) -> list[int]:
    """Indices of the tokens (in the encoding with special tokens) that start a new word."""
    _, wids = word_ids(text, tokenizer, words, **encode_kw)
    starts, prev = [], None
    for i, w in enumerate(wids):
        if w is not None and w != prev:
            starts.append(i)
        prev = w
    return starts
