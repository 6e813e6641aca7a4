"""Tokenizer loading and Chinese word boundaries (jieba) for whole-word masking."""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from zhtune.errors import ModelLoadError

log = logging.getLogger("zhtune")

VOCAB_FILE = "chinese-bert-vocab.txt"


def builtin_vocab_path() -> Path:
    """The packaged 21,128-entry Chinese BERT vocabulary (see NOTICE)."""
    return Path(str(resources.files("zhtune") / "assets" / VOCAB_FILE))


BUILTIN_NAMES = ("", "builtin", "chinese-bert", "none", "scratch")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def load_tokenizer(path: str | None = None) -> Any:
    """The one tokenizer loader: the built-in Chinese BERT WordPiece vocabulary by default
    (``None``/``builtin``; a fresh object each call, so callers may change it), else any
    Hugging Face tokenizer id or directory."""
    if path is None or str(path).lower() in BUILTIN_NAMES:
        return _builtin_tokenizer()
    from transformers import AutoTokenizer

    try:
        local = Path(path)
        declared = _declared_tokenizer(local) if local.is_dir() else None
        return declared or AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {e}") from None


def tokenizer_for_model(model: str | None, tokenizer: str | None = None, pad: bool = False) -> Any:
    """``tokenizer`` if given, else the model's own, else (no model, or a directory without
    tokenizer files) the built-in vocabulary. ``pad``: a tokenizer without a padding token
    pads with its end-of-text (else unknown) token, as decoder LLMs need."""
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    elif model is None or str(model).lower() in BUILTIN_NAMES:
        tok = load_tokenizer(None)
    else:
        local = Path(model)
        if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
            log.warning(
                "%s has no tokenizer files: using the built-in Chinese BERT vocabulary", model
            )
            tok = load_tokenizer(None)
        else:
            tok = load_tokenizer(str(model))
    if pad and tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
        if tok.pad_token is None:
            raise ModelLoadError(
                f"the tokenizer of {model} has no pad, eos or unk token to pad with"
            )
    return tok


def _declared_tokenizer(path: Path) -> Any | None:
    """The BERT tokenizer class a local directory declares in ``tokenizer_config.json``.

    ``AutoTokenizer`` in transformers 5 ignores the declared class for some model types
    (qwen2 among them) and would read the Chinese BERT vocabulary of a ``zhtune pretrain``
    causal LM as a byte-level Qwen2 tokenizer."""
    import json

    import transformers

    cfg_file = path / "tokenizer_config.json"
    if not cfg_file.is_file():
        return None
    try:
        name = json.loads(cfg_file.read_text(encoding="utf-8")).get("tokenizer_class") or ""
    except ValueError:
        return None
    cls = getattr(transformers, name, None) or getattr(
        transformers, name.removesuffix("Fast"), None
    )
    if cls is None or not name.startswith("Bert"):
        return None
    return cls.from_pretrained(str(path))


def _builtin_tokenizer() -> Any:
    return copy.deepcopy(_builtin_tokenizer_shared())  # ~30 ms; building one takes ~0.7 s


@lru_cache(maxsize=1)
def _builtin_tokenizer_shared() -> Any:
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

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


# --- a Qwen2.5-shaped byte-level BPE tokenizer --------------------------------------------
# Qwen2's pre-tokenizer (tokenizer.json of Qwen/Qwen2.5-*)
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe_tokenizer(
    texts: Any, out: str | Path | None, vocab_size: int, min_frequency: int = 2
) -> Any:
    """Train a byte-level BPE shaped like Qwen2.5's on ``texts`` (an iterable of strings):
    Qwen2's pre-tokenizer regex and NFC normaliser, ``<|endoftext|>`` as pad and eos,
    ``<|im_start|>``/``<|im_end|>`` and a chat template, no BOS/CLS/MASK/UNK. Saved as a
    ``Qwen2TokenizerFast`` in ``out`` (when given) and returned."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2TokenizerFast  # type: ignore[attr-defined]  # lazy export

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=min_frequency,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token=QWEN_SPECIALS[0],
        pad_token=QWEN_SPECIALS[0],
        unk_token=None,
        bos_token=None,
        additional_special_tokens=list(QWEN_SPECIALS[1:]),
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    if out is not None:
        fast.save_pretrained(str(out))
    return fast
