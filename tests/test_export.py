"""`zhtune export`: ONNX fp32/int8 with its own parity checks, and the "onnx" model kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import labelled_rows, tiny_encoder, write_csv
from zhtune.classifier import Classifier
from zhtune.cli import main

LABELS = ["negative", "positive"]
TEXTS = [
    "质量很好，物流也快",
    "太差了",
    "一般",
    "这是一段比较长的评论，说了很多很多的话。" * 5,
    "好",
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return tiny_encoder(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", labelled_rows(5))


@pytest.fixture(scope="module")
def onnx_dir(encoder_dir: Path, train_csv: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    args = ["export", "--model", str(encoder_dir), "--out", str(out), "--train", str(train_csv)]
    assert main([*args, "--int8", "--max-accuracy-drop", "100"]) == 0
    return out


def test_export_writes_a_loadable_onnx_dir(onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / "zhtune.json").read_text("utf-8"))
    assert manifest["kind"] == "onnx" and manifest["labels"] == LABELS
    assert manifest["onnx_file"] == "model.int8.onnx" and manifest["int8"] is True
    for f in ("model.onnx", "model.int8.onnx", "tokenizer.json", "config.json", "export.json"):
        assert (onnx_dir / f).is_file(), f
    report = json.loads((onnx_dir / "export.json").read_text("utf-8"))
    assert report["fp32_parity"]["max_abs_diff"] <= 1e-4
    acc = report["dev_accuracy"]
    assert {"fp32_torch", "fp32_onnx", "int8_onnx"} <= set(acc) and acc["rows"] > 0
    assert abs(acc["fp32_torch"] - acc["fp32_onnx"]) < 1e-9


def test_onnx_kind_round_trip(onnx_dir: Path, encoder_dir: Path) -> None:
    torch_clf = Classifier.load(encoder_dir)
    fp32 = Classifier.load(onnx_dir, int8=False)
    int8 = Classifier.load(onnx_dir)
    assert fp32.kind == int8.kind == "onnx" and int8.labels == LABELS
    ref = torch_clf.predict_proba(TEXTS)
    assert np.abs(fp32.predict_proba(TEXTS, batch_size=2) - ref).max() < 1e-4
    single = np.stack([fp32.predict_proba([t])[0] for t in TEXTS])
    assert np.abs(single - ref).max() < 1e-4
    pred = int8.predict("质量很好")
    assert pred["label"] in LABELS and abs(sum(pred["probs"].values()) - 1) < 1e-6
    assert len(int8.predict(TEXTS, batch_size=2)) == len(TEXTS)


def test_predict_cli_on_onnx(onnx_dir: Path, capsys) -> None:
    assert main(["predict", "--model", str(onnx_dir), "--text", "很好"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in LABELS


def test_failed_checks_leave_no_manifest(
    encoder_dir: Path, train_csv: Path, tmp_path: Path, capsys
):
    base = ["export", "--model", str(encoder_dir), "--train", str(train_csv)]
    out = tmp_path / "parity"
    assert main([*base, "--out", str(out), "--tolerance", "-1", "--no-optimize"]) == 2
    assert "parity check failed" in capsys.readouterr().err
    assert not (out / "zhtune.json").exists()
    out = tmp_path / "acc"
    assert main([*base, "--out", str(out), "--int8", "--max-accuracy-drop", "-1"]) == 2
    assert "int8 accuracy check failed" in capsys.readouterr().err
    assert not (out / "zhtune.json").exists()


def test_export_refusals(encoder_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x")
    assert main(["export", "--model", str(encoder_dir), "--out", out, "--int8"]) == 2
    assert "--dataset NAME or --train FILE" in capsys.readouterr().err
    bl = tmp_path / "bl"
    bl.mkdir()
    (bl / "zhtune.json").write_text('{"kind": "baseline", "labels": ["a", "b"]}', "utf-8")
    (bl / "baseline.safetensors").write_bytes(b"")
    assert main(["export", "--model", str(bl), "--out", out]) == 2
    assert "kind 'baseline' cannot be exported" in capsys.readouterr().err
