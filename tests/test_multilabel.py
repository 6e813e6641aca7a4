"""Multi-label: reading, splits, metrics, thresholds, the baseline end to end, clear errors."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, roc_auc_score

from conftest import write_csv, write_jsonl
from zhtune import Classifier
from zhtune.cli import main
from zhtune.data import DataConfig, load_splits
from zhtune.errors import DataError, ZhtuneError
from zhtune.evaluation.metrics import multilabel_metrics
from zhtune.evaluation.thresholds import tune_thresholds

WORDS = {"水果": "苹果香蕉", "天气": "下雨刮风", "交通": "堵车地铁"}
FILLER = ["今天", "我们", "听说", "大家", "早上", "晚上", "后来", "其实"]


def toy_rows(n: int = 84) -> list[tuple[str, str]]:
    """Each row mentions 1-2 topics; its labels are those topics (joined by |)."""
    sets = [(t,) for t in WORDS] + list(combinations(WORDS, 2))
    rows = []
    for i in range(n):
        s = sets[i % len(sets)]
        text = FILLER[i % 8] + "，".join(WORDS[t] for t in s) + FILLER[(i * 3) % 8] + str(i)
        rows.append((text, "|".join(s)))
    return rows


def test_metrics_equal_scikit_learn_on_hand_made_predictions():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    p = np.array(
        [[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.3, 0.2], [0.1, 0.6, 0.9], [0.55, 0.1, 0.45]]
    )
    cut = np.array([0.5, 0.5, 0.5])
    m = multilabel_metrics(y, p, ["a", "b", "c"], cut)
    pred = (p >= 0.5).astype(int)
    for avg in ("micro", "macro", "samples"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, pred, average=avg))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["subset_accuracy"] == pytest.approx(3 / 5)  # rows 0, 1 and 4 exactly right (by hand)
    for j, name in enumerate("abc"):
        assert m["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        assert m["per_class"][name]["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j]))
    # thresholds are applied per label
    m2 = multilabel_metrics(y, p, ["a", "b", "c"], np.array([0.5, 0.65, 0.5]))
    assert m2["per_class"]["b"]["precision"] == pytest.approx(1.0)


def test_thresholds_tuned_on_dev_beat_one_half_where_they_must():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 2, size=(200, 2))
    # label 0: well separated around 0.5; label 1: a model that is never confident (all < 0.5)
    p = np.stack([np.where(y[:, 0], 0.8, 0.2), np.where(y[:, 1], 0.35, 0.15)], axis=1)
    p = p + rng.uniform(-0.05, 0.05, size=p.shape)
    t = tune_thresholds(y, p)
    assert 0.15 < t[1] <= 0.35
    tuned = f1_score(y, p >= t[None, :], average="macro")
    half = f1_score(y, p >= 0.5, average="macro")
    assert tuned > half + 0.3
    assert tuned == pytest.approx(1.0)


def test_csv_and_jsonl_label_sets(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv", toy_rows())
    s = load_splits(DataConfig(train=str(csv_path), multi_label=True, seed=1))
    assert s.multi_label and list(s.label_map.names) == sorted(WORDS)
    assert all(isinstance(x, tuple) and x for x in s.train.labels)
    assert len(s.train) + len(s.dev) + len(s.test) == 84
    y = s.train.label_matrix(s.label_map)
    assert y.shape == (len(s.train), 3) and set(y.sum(1)) == {1, 2}
    # every label is in dev and test (iterative stratification)
    assert s.dev.label_matrix(s.label_map).sum(0).min() > 0
    assert s.test.label_matrix(s.label_map).sum(0).min() > 0
    ds = s.train.to_hf(s.label_map)
    assert ds[0]["label"] == [float(v) for v in y[0]]
    jl = write_jsonl(
        tmp_path / "t.jsonl", [{"text": t, "label": lab.split("|")} for t, lab in toy_rows()]
    )
    s2 = load_splits(DataConfig(train=str(jl), multi_label=True, seed=1))
    assert s2.train.labels == s.train.labels


def test_label_set_errors_name_file_and_line(tmp_path):
    rows = toy_rows()
    bad = write_csv(tmp_path / "e.csv", [*rows[:5], ("没有标签的一行", ""), *rows[5:]])
    with pytest.raises(DataError, match=r"e\.csv:7.*allow-empty-labels"):
        load_splits(DataConfig(train=str(bad), multi_label=True))
    s = load_splits(DataConfig(train=str(bad), multi_label=True, allow_empty_labels=True))
    assert () in s.train.labels + s.dev.labels + s.test.labels
    dev = write_csv(tmp_path / "dev.csv", [rows[0], ("新的主题", "水果|体育")])
    with pytest.raises(DataError, match=r"dev\.csv:3.*体育"):
        load_splits(
            DataConfig(
                train=str(write_csv(tmp_path / "t.csv", rows)), dev=str(dev), multi_label=True
            )
        )
    sep = write_csv(tmp_path / "s.csv", [(t, lab.replace("|", ";")) for t, lab in rows])
    s = load_splits(DataConfig(train=str(sep), multi_label=True, label_sep=";"))
    assert len(s.label_map) == 3


def test_mixed_single_and_multi_label_inputs_give_clear_errors(tmp_path):
    jl = write_jsonl(
        tmp_path / "l.jsonl",
        [{"text": "苹果", "label": "水果"}, {"text": "下雨", "label": ["天气"]}],
    )
    with pytest.raises(DataError, match=r"l\.jsonl:2.*--multi-label"):
        load_splits(DataConfig(train=str(jl)))
    with pytest.raises(DataError, match="add --multi-label"):
        load_splits(DataConfig(dataset="multi-synthetic"))


@pytest.fixture
def multi_baseline(tmp_path):
    train = write_csv(tmp_path / "train.csv", toy_rows(126))
    out = tmp_path / "run"
    args = ["baseline", "--train", str(train), "--multi-label", "true", "--min-df", "1"]
    assert main([*args, "--dev-ratio", "0.2", "--test-ratio", "0.2", "--out", str(out)]) == 0
    return out, train


def test_baseline_one_vs_rest_end_to_end(multi_baseline, tmp_path):
    out, train = multi_baseline
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for k in ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy"):
        assert k in m
    assert m["micro_f1"] > 0.9 and m["model"] == "tfidf-logreg-ovr"
    manifest = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["multi_label"] and set(manifest["thresholds"]) == set(WORDS)
    clf = Classifier.load(out)
    r = clf.predict("听说苹果香蕉，下雨刮风大家")
    assert sorted(r["labels"]) == ["天气", "水果"]
    assert set(r["probs"]) == set(WORDS) and sum(r["probs"].values()) > 1.2  # independent
    rows = [
        json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert isinstance(rows[0]["gold"], list) and isinstance(rows[0]["labels"], list)
    # a single-label model scored on multi-label data (and back) is a clear error
    from zhtune.evaluation.scoring import score

    single = load_splits(DataConfig(train=str(train), seed=1))  # "水果|天气" read as one name
    with pytest.raises(ZhtuneError, match="multi-label model but the data is single-label"):
        score(clf, single.test, list(clf.labels))


def test_label_scoring_refuses_multi_label_data():
    from zhtune.data.multilabel import require_single_label

    s = load_splits(DataConfig(dataset="multi-synthetic", multi_label=True, max_train_samples=50))
    with pytest.raises(DataError, match="zero-shot.*no multi-label mode.*zhtune finetune"):
        require_single_label(s, "zero-shot (label scoring)")


@pytest.mark.slow
def test_encoder_multi_label_end_to_end(tmp_path):
    from zhtune.finetune import FinetuneConfig
    from zhtune.finetune.encoder import run_finetune

    train = write_csv(tmp_path / "train.csv", toy_rows(168))
    cfg = FinetuneConfig(
        train=str(train), multi_label=True, model="none", hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_length=24, batch_size=8,
        learning_rate=3e-3, num_train_epochs=6, eval_every=1.0, warmup_ratio=0.0,
        class_weights="balanced", progress=False, report_to="none",
    )  # fmt: skip
    out = tmp_path / "enc"
    m = run_finetune(cfg, out)
    assert m["multi_label"] and m["micro_f1"] > 0.8, m["micro_f1"]
    assert {"macro_f1", "samples_f1", "hamming_loss", "subset_accuracy"} <= set(m)
    conf = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert conf["problem_type"] == "multi_label_classification"
    manifest = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["multi_label"] and set(manifest["thresholds"]) == set(WORDS)
    r = Classifier.load(out).predict(["听说苹果香蕉，下雨刮风大家"])[0]
    assert isinstance(r["labels"], list) and set(r["probs"]) == set(WORDS)
    assert "水果" in r["labels"]


def test_evaluate_and_predict_cli_on_a_multi_label_model(multi_baseline, tmp_path, capsys):
    out, train = multi_baseline
    ev = tmp_path / "ev"
    data = [
        "--train",
        str(train),
        "--multi-label",
        "true",
        "--dev-ratio",
        "0.2",
        "--test-ratio",
        "0.2",
    ]
    assert main(["evaluate", "--model", str(out), "--out", str(ev), *data]) == 0
    m = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
    assert m["micro_f1"] > 0.9 and 0 <= m["ece"] <= 1
    assert all("ece" in v and "roc_auc" in v for v in m["per_class"].values())
    robust = json.loads((ev / "robustness.json").read_text(encoding="utf-8"))
    assert robust["clean_micro_f1"] == pytest.approx(m["micro_f1"], abs=0.2)
    assert all("flip_rate" in r or "skipped" in r for r in robust["perturbations"].values())
    # single-label data against a multi-label model: a clear one-line error (exit 2)
    single = ["--train", str(train), "--dev-ratio", "0.2", "--test-ratio", "0.2"]
    assert main(["evaluate", "--model", str(out), "--out", str(tmp_path / "ev2"), *single]) == 2
    assert "multi-label model but the data is single-label" in capsys.readouterr().err


def test_predict_cli_and_server_return_label_lists(multi_baseline, capsys):
    from starlette.testclient import TestClient

    from zhtune.serving.server import ServeSettings, create_app

    out, _ = multi_baseline
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--text", "听说苹果香蕉，下雨刮风大家"]) == 0
    printed = json.loads(capsys.readouterr().out)  # not a terminal: one JSON object a text
    assert sorted(printed["labels"]) == ["天气", "水果"]
    from zhtune.serving.predict import format_prediction

    assert format_prediction("文本", printed).splitlines()[1] == "  → 天气, 水果"
    clf = Classifier.load(out)
    with TestClient(create_app(ServeSettings(model=str(out)), classifier=clf)) as client:
        r = client.post(
            "/v1/classify", json={"texts": ["听说苹果香蕉，下雨刮风大家", "早上堵车地铁"]}
        )
        assert r.status_code == 200, r.text
        res = r.json()["results"]
    assert sorted(res[0]["labels"]) == ["天气", "水果"] and res[1]["labels"] == ["交通"]
    assert res[0]["label"] is None and set(res[0]["probs"]) == set(WORDS)


@pytest.mark.slow
def test_lora_head_multi_label_end_to_end(tmp_path):
    from test_llm import tiny_qwen2_dir

    base = tiny_qwen2_dir(tmp_path / "base")
    train = write_csv(tmp_path / "train.csv", toy_rows(84))
    out = tmp_path / "lora"
    fast = ["--learning-rate=1e-2", "--batch-size=8", "--max-length=32", "--max-steps=12",
            "--eval-every=6", "--warmup-ratio=0", "--lora-r=4", "--lora-alpha=8",
            "--progress=false", "--report-to=none"]  # fmt: skip
    args = ["lora", "--train", str(train), "--multi-label", "true", "--model", str(base)]
    assert main([*args, "--mode", "head", "--out", str(out), *fast]) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["multi_label"] and 0 <= m["micro_f1"] <= 1 and "hamming_loss" in m
    manifest = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "lora-head" and set(manifest["thresholds"]) == set(WORDS)
    clf = Classifier.load(out)
    r = clf.predict("听说苹果香蕉，下雨刮风大家")
    assert isinstance(r["labels"], list) and set(r["probs"]) == set(WORDS)
    probs = clf.predict_proba(["早上堵车地铁", "苹果"])
    assert np.all((probs > 0) & (probs < 1)) and not np.allclose(probs.sum(1), 1.0)  # sigmoids
    # label scoring refuses multi-label data with a clear message (exit 2)
    sc = ["--mode", "scoring", "--label-words", "水果=水果,天气=天气,交通=交通"]
    assert main([*args, *sc, "--out", str(tmp_path / "sc"), *fast]) == 2


def test_evaluate_report_of_a_multi_label_run(tmp_path):
    """report.html of a multi-label evaluation: set metrics and a per-label table instead of
    accuracy, errors most confidently wrong first, explanations of their worst label."""
    rows = toy_rows(150)
    swap = {"水果": "交通", "天气": "水果", "交通": "天气"}
    test = [(t, swap[lab] if i < 9 and "|" not in lab else lab) for i, (t, lab) in
            enumerate(rows[126:])]  # fmt: skip
    data = [
        "--train", str(write_csv(tmp_path / "train.csv", rows[:126])),
        "--dev", str(write_csv(tmp_path / "dev.csv", rows[:40])),
        "--test", str(write_csv(tmp_path / "test.csv", test)),
        "--multi-label", "true",
    ]  # fmt: skip
    assert main(["baseline", *data, "--min-df", "1", "--out", str(tmp_path / "run")]) == 0
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(tmp_path / "run"), *data, "--out", str(ev)]) == 0
    m = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
    page = (ev / "report.html").read_text(encoding="utf-8")
    head = page[page.index('<table id="headline">') :].split("</table>")[0]
    for h in ("micro-F1", "macro-F1", "samples-F1", "hamming loss", "subset accuracy"):
        assert f"<th>{h}</th>" in head
    assert "<th>accuracy</th>" not in head and "T-scaled" not in page
    for k in ("micro_f1", "samples_f1", "hamming_loss", "subset_accuracy"):
        assert f"{m[k]:.4f}" in head
    per_label = page[page.index('<table class="per-label">') :].split("</table>")[0]
    for name, v in m["per_class"].items():
        assert f'<td class="t">{name}</td>' in per_label and f"{v['f1']:.4f}" in per_label
    assert "<th>threshold</th>" in per_label and "<th>micro-F1</th>" in page  # robustness too
    errors = [json.loads(x) for x in (ev / "errors.jsonl").read_text().splitlines()]
    assert len(errors) >= 6
    gaps = [max(abs(e["probs"][n] - (n in e["gold"])) for n in WORDS) for e in errors]
    assert gaps == sorted(gaps, reverse=True)  # most confidently wrong first
    ex = [json.loads(x) for x in (ev / "explanations.jsonl").read_text().splitlines()]
    assert len(ex) == 5 and [x["text"] for x in ex] == [e["text"] for e in errors[:5]]
    for x in ex:
        assert x["method"] == "occlusion"
        assert x["label"] in set(x["gold"]) ^ set(x["predicted_labels"])
        assert x["confidence"] == pytest.approx(errors[ex.index(x)]["probs"][x["label"]])
    explained = page[page.index('<table class="explained">') :].split("</table>")[0]
    assert "<th>explained label</th>" in explained and "background:rgba(" in explained
