"""`zhtune evaluate` and `zhtune compare` end to end on a small CSV with a baseline model."""

import json
import sys
import types

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from zhtune import classifier as classifier_mod
from zhtune.classifier import Classifier
from zhtune.cli import main
from zhtune.data import DataConfig
from zhtune.errors import ZhtuneError
from zhtune.evaluation.compare import check_same_labels, compare_runs
from zhtune.runs import write_manifest

SPLIT = ["--dev-ratio", "0.2", "--test-ratio", "0.2"]
FAST = ["--max-robustness-samples", "12", "--perturbations", "homophone,punct_remove,emoji"]


@pytest.fixture
def data_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", labelled_rows())


@pytest.fixture
def baseline_run(tmp_path, data_csv):
    out = tmp_path / "bl"
    rc = main(
        ["-q", "baseline", "--train", str(data_csv), "--out", str(out), "--min-df", "1", *SPLIT]
    )
    assert rc == 0
    return out


class KeywordModel:
    """A model of a made-up kind: positive when a text has more 好/满意 than 差/失望."""

    labels = ["negative", "positive"]

    def predict_proba(self, texts, batch_size=32):
        s = np.array(
            [
                sum(t.count(w) for w in "好满意推荐") - sum(t.count(w) for w in "差坏慢失望")
                for t in texts
            ],
            dtype=float,
        )
        p = 1 / (1 + np.exp(-2 * s))
        return np.stack([1 - p, p], axis=1)


@pytest.fixture
def keyword_kind(monkeypatch):
    """Register kind 'keyword-test' the way every kind is: a module with load_backend."""
    mod = types.ModuleType("zhtune_keyword_kind")
    mod.load_backend = lambda path, manifest, **kw: KeywordModel()
    monkeypatch.setitem(sys.modules, "zhtune_keyword_kind", mod)
    monkeypatch.setitem(classifier_mod.KIND_MODULES, "keyword-test", "zhtune_keyword_kind")


def test_evaluate_end_to_end(tmp_path, baseline_run, data_csv):
    out = tmp_path / "ev"
    rc = main(
        ["-q", "evaluate", "--model", str(baseline_run), "--train", str(data_csv), *SPLIT]
        + ["--out", str(out), "--save-temperature", "--target-accuracy", "0.9", *FAST]
    )
    assert rc == 0
    for name in (
        "metrics.json",
        "predictions.jsonl",
        "errors.jsonl",
        "confidence.json",
        "calibration.json",
        "robustness.json",
        "flipped.jsonl",
        "summary.json",
        "report.html",
        "confusion_matrix.png",
        "confidence_hist.png",
        "reliability.png",
        "coverage.png",
        "robustness.png",
    ):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("accuracy", "macro_f1", "weighted_precision", "roc_auc", "log_loss", "ece"):
        assert key in m
    assert m["kind"] == "baseline" and m["n"] == 12
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text("utf-8").splitlines()]
    assert len(errors) == sum(p["label"] != p["gold"] for p in preds)
    assert [e["confidence"] for e in errors] == sorted(
        (e["confidence"] for e in errors), reverse=True
    )
    conf = json.loads((out / "confidence.json").read_text(encoding="utf-8"))
    assert conf["n_bins"] == 15 and conf["target_accuracy"] == 0.9
    assert conf["temperature"] > 0 and len(conf["low_confidence"]) == 12
    rob = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert set(rob["perturbations"]) == {"homophone", "punct_remove", "emoji"}
    # --save-temperature: the model directory now loads calibrated
    cal = json.loads((baseline_run / "calibration.json").read_text(encoding="utf-8"))
    assert cal["temperature"] == pytest.approx(conf["temperature"])
    clf = Classifier.load(baseline_run, calibrated=True)
    assert clf.temperature == pytest.approx(conf["temperature"])


def test_evaluate_takes_the_data_from_the_model_and_can_skip_robustness(tmp_path, baseline_run):
    out = tmp_path / "ev2"
    assert (
        main(["-q", "evaluate", "--model", str(baseline_run), "--out", str(out), "--no-robustness"])
        == 0
    )
    assert not (out / "robustness.json").exists()
    assert not (baseline_run / "calibration.json").exists()  # only with --save-temperature
    assert (out / "calibration.json").is_file()


def test_compare_end_to_end_adds_the_baseline(tmp_path, data_csv, keyword_kind, capsys):
    run = tmp_path / "kw"
    run.mkdir()
    write_manifest(run, "keyword-test", ["negative", "positive"])
    out = tmp_path / "cmp"
    rc = main(
        ["-q", "compare", str(run), "--train", str(data_csv), *SPLIT, "--out", str(out), *FAST]
    )
    assert rc == 0
    assert (out / "baseline" / "baseline.safetensors").is_file()  # trained on the same data
    comp = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    names = [r["name"] for r in comp["rows"]]
    assert names == ["kw", "baseline (TF-IDF)"]
    assert {r["n"] for r in comp["rows"]} == {12}  # the same test rows
    for r in comp["rows"]:
        for key in ("accuracy", "macro_f1", "ece", "robustness_score", "texts_per_second"):
            assert r[key] is not None, key
    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert "| kw | keyword-test |" in md and "baseline (TF-IDF)" in md
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="headline"' in html and html.count("data:image/png;base64,") >= 8
    assert "baseline (TF-IDF)" in capsys.readouterr().out


def test_compare_with_a_baseline_run_trains_no_other(tmp_path, baseline_run, data_csv):
    out = tmp_path / "cmp"
    rows = compare_runs(
        [baseline_run],
        DataConfig(train=str(data_csv), dev_ratio=0.2, test_ratio=0.2),
        out,
        robustness=False,
    )
    assert [r["kind"] for r in rows] == ["baseline"]
    assert not (out / "baseline").exists()
    assert rows[0]["robustness_score"] is None


def test_compare_refuses_different_label_sets(tmp_path, data_csv, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, labels in (
        (a, ["negative", "positive"]),
        (b, ["neg", "neu", "pos"]),
        (c, ["positive", "negative"]),
    ):
        d.mkdir()
        write_manifest(d, "baseline", labels)
    with pytest.raises(ZhtuneError, match="different label sets"):
        check_same_labels([a, b])
    with pytest.raises(ZhtuneError, match="different label orders"):
        check_same_labels([a, c])
    assert check_same_labels([a, a]) == ["negative", "positive"]
    out = tmp_path / "cmp"
    rc = main(["compare", str(a), str(b), "--train", str(data_csv), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "different label sets" in err and "neg, neu, pos" in err
    assert not (out / "baseline").exists()  # refused before any work


def test_compare_multi_label_runs_shows_the_multi_label_scores(tmp_path, capsys):
    import shutil

    from test_multilabel import toy_rows

    train = write_csv(tmp_path / "ml.csv", toy_rows(126))
    data = ["--train", str(train), "--multi-label", "true", *SPLIT]
    run = tmp_path / "ml-run"
    assert main(["-q", "baseline", *data, "--min-df", "1", "--out", str(run)]) == 0
    shutil.copytree(run, tmp_path / "ml-copy")
    out = tmp_path / "cmp"
    rc = main(["-q", "compare", str(run), str(tmp_path / "ml-copy"), *data, "--out", str(out),
               "--no-robustness"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    comp = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert comp["multi_label"] is True and [r["name"] for r in comp["rows"]] == [
        "ml-run",
        "ml-copy",
    ]  # a baseline among the runs: no other trained
    keys = ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy")
    for r in comp["rows"]:
        assert all(isinstance(r[k], float) for k in keys) and r["micro_f1"] > 0.9
        assert "accuracy" not in r
    assert comp["rows"][0]["micro_f1"] == comp["rows"][1]["micro_f1"]  # same model, same rows
    md = (out / "comparison.md").read_text(encoding="utf-8")
    for text in (md, printed):
        header = next(x for x in text.splitlines() if x.startswith("| model |"))
        cols = [c.strip() for c in header.strip("|").split("|")]
        assert cols[:6] == ["model", "micro-F1", "macro-F1", "samples-F1", "subset acc", "hamming"]
        assert "accuracy" not in cols and "ECE (T-scaled)" not in cols
    assert "(multi-label)" in md and "micro-F1 over the perturbations" in md
    assert (out / "report.html").is_file()


def test_compare_refuses_single_and_multi_label_models_together(tmp_path, capsys):
    from test_multilabel import WORDS, toy_rows

    multi = write_csv(tmp_path / "ml.csv", toy_rows(126))
    single = write_csv(tmp_path / "sl.csv", [r for r in toy_rows(126) if "|" not in r[1]])
    runs = {}
    for name, csv, flag in (("ml", multi, "true"), ("sl", single, "false")):
        runs[name] = tmp_path / name
        args = ["-q", "baseline", "--train", str(csv), "--multi-label", flag, "--min-df", "1"]
        assert main([*args, *SPLIT, "--out", str(runs[name])]) == 0
    assert Classifier.load(runs["sl"]).labels == Classifier.load(runs["ml"]).labels  # same set
    assert sorted(WORDS) == sorted(Classifier.load(runs["sl"]).labels)
    out = tmp_path / "cmp"
    args = ["compare", str(runs["ml"]), str(runs["sl"]), "--train", str(multi)]
    assert main([*args, "--multi-label", "true", *SPLIT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "single-label models" in lines[0] and str(runs["sl"]) in lines[0]
    assert str(runs["ml"]) + "," not in lines[0] and "Traceback" not in err
    assert not (out / "models").exists()  # refused before any evaluation
    # and the other way round: multi-label model on single-label data
    args = ["compare", str(runs["sl"]), str(runs["ml"]), "--train", str(single)]
    assert main([*args, "--multi-label", "false", *SPLIT, "--out", str(tmp_path / "c2")]) == 2
    assert "multi-label models (" in capsys.readouterr().err
