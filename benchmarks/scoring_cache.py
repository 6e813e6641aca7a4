"""Label scoring: each prompt once (KV cache over the W label words) vs the full B*W rows.

    PYTHONPATH=src python benchmarks/scoring_cache.py [--texts 64] [--hidden 256] [--layers 4]

A random Qwen2 causal LM on the packaged Chinese vocabulary, four multi-token label words;
prints the tokens fed to the model, the wall time of each path and the largest difference
of the class probabilities (CPU, one thread)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    from test_llm import tiny_qwen2_dir
    from zhtune.llm.models import load_base, load_llm_tokenizer
    from zhtune.llm.scoring import DEFAULT_TEMPLATE, LabelScorer

    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16, help="texts per forward")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = tiny_qwen2_dir(Path(tempfile.mkdtemp()) / "lm", hidden=a.hidden, layers=a.layers)
    tok = load_llm_tokenizer(str(d))
    lm = load_base(str(d), "scoring", tok).eval()
    words = {"negative": ["负面评价", "差评了"], "positive": ["正面评价", "好评如潮"]}
    scorer = LabelScorer(tok, DEFAULT_TEMPLATE, words, max_length=128)
    base = "这家店的东西质量很好，物流也快，客服态度耐心，包装完整，下次还会再来买。"
    texts = [f"{i}号评论：{base * (1 + i % 3)}" for i in range(a.texts)]
    fed: list[int] = []
    lm.register_forward_pre_hook(lambda _m, _a, kw: fed.append(kw["input_ids"].numel()),
                                 with_kwargs=True)  # fmt: skip

    def full_rows() -> torch.Tensor:
        enc, out = scorer.encode(texts), []
        with torch.inference_mode():
            for b in range(0, len(enc), a.batch):
                s, c = scorer.word_logprobs(lm, scorer.candidates(enc[b : b + a.batch]))
                out.append(scorer.class_scores(s.view(-1, scorer.n_words)))
        return torch.cat(out)

    rows = []
    for name, fn in (("full B*W rows", full_rows),
                     ("prompt once + KV cache", lambda: torch.as_tensor(
                         scorer.predict_scores(lm, texts, a.batch)))):  # fmt: skip
        fn()  # warm-up
        fed.clear()
        t = time.perf_counter()
        scores = fn()
        rows.append((name, sum(fed), time.perf_counter() - t, torch.softmax(scores.double(), -1)))
    diff = float((rows[0][3] - rows[1][3]).abs().max())
    print(f"{a.texts} texts, W={scorer.n_words} words, hidden {a.hidden}, {a.layers} layers")
    print("| path | tokens fed | seconds |\n|---|---|---|")
    for name, n, s, _ in rows:
        print(f"| {name} | {n} | {s:.2f} |")
    print(f"max |probability difference|: {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
