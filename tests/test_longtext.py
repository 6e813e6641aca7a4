"""Long documents: window construction, pooling, and chunks vs truncation end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import write_csv
from zhtune import Classifier
from zhtune.finetune import FinetuneConfig
from zhtune.finetune.encoder import run_finetune
from zhtune.finetune.longtext import encode, head_tail, pool, window_spans, windows
from zhtune.text import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_windows_on_a_hand_made_token_list(tok):
    ids = list(range(1000, 1020))  # 20 text tokens; windows of 10 = [CLS] + 8 + [SEP]
    w = windows(tok, ids, 10, "chunks", stride=3)
    # starts 0, 5, 10 (step 8 - 3 = 5), then one more ending exactly at the last token
    assert [x[1:-1] for x in w] == [ids[0:8], ids[5:13], ids[10:18], ids[12:20]]
    assert all(len(x) == 10 and x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in w)
    for a, b in zip(w, w[1:], strict=False):  # consecutive windows share at least `stride` tokens
        assert len(set(a[1:-1]) & set(b[1:-1])) >= 3
    assert set().union(*(x[1:-1] for x in w)) == set(ids)  # the whole document is covered
    assert window_spans(8, 8, 3) == [(0, 8)]  # fits: one window
    assert windows(tok, ids[:5], 10, "chunks", 3) == [
        [tok.cls_token_id, *ids[:5], tok.sep_token_id]
    ]
    # head-tail: first budget//4 = 2 and last 6 tokens; truncate: the first 8
    assert windows(tok, ids, 10, "head-tail") == [[101, 1000, 1001, *range(1014, 1020), 102]]
    assert head_tail(ids[:7], 8) == ids[:7]
    assert windows(tok, ids, 10, "truncate") == [[101, *ids[:8], 102]]


def test_encode_maps_windows_to_documents(tok):
    inputs, doc = encode(tok, ["好" * 30, "短文本"], 12, "chunks", 2)
    # 30 tokens, budget 10, step 8: starts 0, 8, 16, 20 -> 4 windows; the short text: 1
    assert doc.tolist() == [0, 0, 0, 0, 1]
    assert max(len(x) for x in inputs) == 12


def test_pooling_equals_a_hand_computation():
    logits = np.array([[1.0, -1.0], [3.0, 0.0], [0.0, 2.0], [-2.0, 5.0]])
    doc = np.array([0, 0, 1, 1])
    assert pool(logits, doc, 2, "mean").tolist() == [[2.0, -0.5], [-1.0, 3.5]]
    assert pool(logits, doc, 2, "max").tolist() == [[3.0, 0.0], [0.0, 5.0]]


END = {"positive": ["总之非常满意", "结论是很好"], "negative": ["总之非常失望", "结论是很差"]}
FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"


def long_docs(n: int, seed: int) -> list[tuple[str, str]]:
    """~70 characters of random filler; only the last few characters decide the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        filler = "".join(rng.choice(FILLER) for _ in range(70))
        rows.append((filler + "。" + rng.choice(END[label]), label))
    return rows


@pytest.mark.slow
def test_chunks_beat_truncation_when_the_label_is_at_the_end(tmp_path):
    train = write_csv(tmp_path / "train.csv", long_docs(160, 0))
    dev = write_csv(tmp_path / "dev.csv", long_docs(40, 1))
    test = write_csv(tmp_path / "test.csv", long_docs(60, 2))
    common = dict(
        train=str(train), dev=str(dev), test=str(test), model="none", hidden_size=32,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_length=24,
        batch_size=16, learning_rate=3e-3, num_train_epochs=6, eval_every=1.0,
        warmup_ratio=0.0, progress=False, report_to="none",
    )  # fmt: skip
    acc = {}
    for mode in ("truncate", "chunks"):
        out = tmp_path / mode
        m = run_finetune(FinetuneConfig(**common, long_text=mode, stride=4), out)
        acc[mode] = m["accuracy"]
    assert acc["truncate"] < 0.7  # the first 22 tokens carry no signal
    assert acc["chunks"] > acc["truncate"] + 0.2, acc
    manifest = json.loads((tmp_path / "chunks" / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["long_text"] == {"strategy": "chunks", "stride": 4, "pool": "mean"}
    clf = Classifier.load(tmp_path / "chunks")  # the strategy comes from the model, no flag
    assert clf.backend.long_text == "chunks"
    assert clf.predict(long_docs(1, 5)[0][0])["label"] in ("positive", "negative")


# --- LoRA head (decoder LLM): the same windows, no [CLS]/[SEP] -----------------------------
def end_docs(n: int, seed: int) -> list[tuple[str, str]]:
    """Neutral-ish filler from the reviews (both classes), then the sentence that decides."""
    from conftest import NEG, POS

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        filler = "".join(rng.sample(POS[:4] + NEG[:4], 8))
        rows.append((filler + rng.choice(POS[4:] if i % 2 else NEG[4:]), label))
    return rows


@pytest.fixture(scope="module")
def qwen_chunks_run(tmp_path_factory):
    """A tiny Qwen2-shaped LM (byte-level BPE, no BOS/EOS added) trained with --long-text
    chunks by ``zhtune lora --mode head``, a few steps."""
    from test_real_path import qwen_style_dir
    from zhtune.cli import main

    root = tmp_path_factory.mktemp("lora-long")
    base = qwen_style_dir(root / "base")
    train = write_csv(root / "train.csv", end_docs(16, 0))
    args = ["lora", "--model", str(base), "--train", str(train), "--mode", "head",
            "--long-text", "chunks", "--stride", "2", "--max-length", "8", "--max-steps", "2",
            "--eval-every", "2", "--batch-size", "8", "--lora-r", "2", "--lora-alpha", "4",
            "--dev-ratio", "0.25", "--test-ratio", "0.25", "--progress", "false",
            "--report-to", "none", "--warmup-ratio", "0", "--out", str(root / "run")]  # fmt: skip
    assert main(args) == 0
    return root / "run"


def test_decoder_windows_are_plain_token_windows(qwen_chunks_run):
    from zhtune.finetune.longtext import specials
    from zhtune.llm.models import load_llm_tokenizer

    qtok = load_llm_tokenizer(str(qwen_chunks_run))
    assert type(qtok).__name__.startswith("Qwen2") and specials(qtok) == ([], [])
    assert specials(load_tokenizer(None)) == ([101], [102])  # BERT vocab: [CLS] ... [SEP]
    ids = list(range(20))
    w = windows(qtok, ids, 10, "chunks", stride=3)  # the whole window is text: step 10 - 3
    assert w == [ids[0:10], ids[7:17], ids[10:20]]
    assert windows(qtok, ids, 8, "head-tail") == [[0, 1, *range(14, 20)]]


def test_lora_head_chunks_pool_every_window_and_see_the_end(qwen_chunks_run):
    import torch

    from conftest import NEG, POS

    manifest = json.loads((qwen_chunks_run / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "lora-head"
    assert manifest["long_text"] == {"strategy": "chunks", "stride": 2, "pool": "mean"}
    clf = Classifier.load(qwen_chunks_run, device="cpu")  # no flag: the stored strategy
    head = clf.backend
    assert (head.long_text, head.stride, head.pool, head.max_length) == ("chunks", 2, "mean", 8)
    doc = end_docs(2, 3)[1][0]
    changed = doc.removesuffix(next(p for p in POS if doc.endswith(p))) + NEG[-1]  # new end
    tok = head.tokenizer
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 16 and tok(doc)["input_ids"] == ids  # several windows, no BOS/EOS
    assert tok(changed)["input_ids"][:8] == ids[:8]  # the first window is the same
    with torch.inference_mode():  # by hand: the head on each window, mean of the logits
        hand = np.mean(
            [
                head.model(input_ids=torch.tensor([ids[a:b]])).logits[0].float().numpy()
                for a, b in window_spans(len(ids), 8, 2)
            ],
            axis=0,
        )
    pooled = head.predict_logits([doc, "短评：很好"])
    assert np.abs(pooled[0] - hand).max() < 1e-4
    chunks = head.predict_logits([doc, changed])
    assert np.abs(chunks[0] - chunks[1]).max() > 1e-5  # the end reaches the prediction
    head.long_text = "truncate"  # the same weights, the first 8 tokens only
    cut = head.predict_logits([doc, changed])
    assert np.abs(cut[0] - cut[1]).max() < 1e-5 and np.abs(cut[0] - chunks[0]).max() > 1e-5
    assert clf.predict(doc)["label"] in ("positive", "negative")


def test_label_scoring_refuses_long_text_in_one_line(tmp_path, capsys):
    from zhtune.cli import main

    train = write_csv(tmp_path / "t.csv", end_docs(8, 0))
    args = ["lora", "--model", str(tmp_path), "--train", str(train), "--mode", "scoring",
            "--long-text", "chunks", "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "long_text" in lines[0] and "--mode head" in lines[0], err
    assert "Traceback" not in err
