"""Classifier.load round trips and the `zhtune predict` modes (text, file, interactive, demo)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import NEG, POS, tiny_encoder, write_csv, write_jsonl
from zhtune.classifier import Classifier
from zhtune.cli import main
from zhtune.errors import DataError
from zhtune.serving.predict import DEMO_TEXTS, interactive, iter_texts

LABELS = ["negative", "positive"]
TEXTS = POS[:5] + NEG[:5] + ["好", "这是一段比较长的评论，" * 8]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return tiny_encoder(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory) -> Path:
    from conftest import labelled_rows
    from zhtune.baseline import BaselineConfig, BaselineModel, build_pipeline
    from zhtune.runs import write_manifest

    out = tmp_path_factory.mktemp("bl")
    rows = labelled_rows(4)
    pipe = build_pipeline(BaselineConfig(min_df=1))
    pipe.fit([t for t, _ in rows], [LABELS.index(label) for _, label in rows])
    BaselineModel(pipe, LABELS).save(out)
    write_manifest(out, "baseline", LABELS)
    return out


def check_prediction(pred: dict, labels: list[str]) -> None:
    assert set(pred) >= {"label", "confidence", "probs"}
    assert pred["label"] in labels
    assert list(pred["probs"]) == labels
    assert abs(sum(pred["probs"].values()) - 1) < 1e-6
    assert pred["confidence"] == max(pred["probs"].values())


@pytest.mark.parametrize("kind", ["baseline", "encoder"])
def test_load_round_trip(kind: str, baseline_dir: Path, encoder_dir: Path) -> None:
    path = baseline_dir if kind == "baseline" else encoder_dir
    clf = Classifier.load(path)
    assert clf.kind == kind and clf.labels == LABELS
    one = clf.predict("质量很好，物流也快")
    check_prediction(one, LABELS)
    many = clf.predict(TEXTS, batch_size=3)
    assert isinstance(many, list) and len(many) == len(TEXTS)
    for p in many:
        check_prediction(p, LABELS)
    # loading again gives the same answers
    again = Classifier.load(path).predict(TEXTS)
    assert [p["label"] for p in again] == [p["label"] for p in many]


def test_encoder_batches_in_input_order_and_match_single(encoder_dir: Path) -> None:
    clf = Classifier.load(encoder_dir)
    texts = TEXTS + TEXTS[::-1]
    batched = clf.predict_proba(texts, batch_size=4)
    single = np.stack([clf.predict_proba([t], batch_size=1)[0] for t in texts])
    assert np.abs(batched - single).max() < 1e-5
    # different batch sizes, same rows
    assert np.abs(clf.predict_proba(texts, batch_size=32) - single).max() < 1e-5
    assert len({p.argmax() for p in single}) == 2, "the tiny model should predict both labels"


def test_int8_load(encoder_dir: Path) -> None:
    import torch

    fp32 = Classifier.load(encoder_dir)
    q = Classifier.load(encoder_dir, int8=True)
    assert q.backend.int8 and not fp32.backend.int8
    kinds = {type(m).__module__ for m in q.backend.model.modules()}
    assert any("quantized" in k for k in kinds), kinds  # nn.Linear -> dynamic int8 Linear
    assert not any(isinstance(m, torch.nn.Linear) for m in q.backend.model.modules())
    probs = q.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), 2) and np.allclose(probs.sum(1), 1)
    # random weights with a 32-wide hidden layer are the worst case for int8; still close
    assert np.abs(probs - fp32.predict_proba(TEXTS)).max() < 0.35


def test_predict_text_and_demo(encoder_dir: Path, capsys) -> None:
    assert main(["predict", "--model", str(encoder_dir), "--text", "很好", "--text", "太差"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["很好", "太差"]
    assert main(["predict", "--model", str(encoder_dir), "--demo"]) == 0
    out = capsys.readouterr().out
    assert DEMO_TEXTS[0][:10] in out and "→" in out


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_predict_file_streams_to_jsonl(fmt: str, encoder_dir: Path, tmp_path: Path) -> None:
    texts = TEXTS
    src = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        src.write_text("\n".join(texts[:3]) + "\n\n" + "\n".join(texts[3:]) + "\n", "utf-8")
    elif fmt == "csv":
        write_csv(src, [(t, "x") for t in texts], header=("text", "other"))
    else:
        write_jsonl(src, [{"text": t, "id": i} for i, t in enumerate(texts)])
    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--model", str(encoder_dir), "--file", str(src), "--out", str(out)]) == 0
    )
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [r["text"] for r in rows] == [t.strip() for t in texts]
    direct = Classifier.load(encoder_dir).predict(texts)
    for r, d in zip(rows, direct, strict=True):
        assert r["label"] == d["label"]
        assert abs(r["confidence"] - d["confidence"]) < 1e-6
    if fmt == "txt":  # line numbers count the blank line
        assert [r["line"] for r in rows][2:4] == [3, 5]


def test_predict_file_chunks(encoder_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import zhtune.serving.predict as predict

    monkeypatch.setattr(predict, "CHUNK", 4)  # several chunks on a small file
    src = tmp_path / "in.txt"
    src.write_text("".join(f"第{i}条评论，还不错\n" for i in range(11)), "utf-8")
    out = tmp_path / "o.jsonl"
    clf = Classifier.load(encoder_dir)
    assert predict.predict_file(clf, src, out) == 11
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 12))


def test_bad_rows_name_the_line_or_are_skipped(encoder_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"text": "很好"}\n{"text": "不错"}\nnot json\n{"txt": "字段错了"}\n{"text": "太差"}\n',
        "utf-8",
    )
    args = ["predict", "--model", str(encoder_dir), "--file", str(src)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and "invalid JSON" in err and "--on-bad-row skip" in err

    out = tmp_path / "o.jsonl"
    assert main([*args, "--on-bad-row", "skip", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 predictions" in err and "2 malformed rows skipped" in err
    assert [json.loads(x)["line"] for x in out.read_text("utf-8").splitlines()] == [1, 2, 5]

    csv_bad = tmp_path / "bad.csv"
    csv_bad.write_text("text,id\n好,1\n坏,2,extra\n", "utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:3: 3 fields"):
        list(iter_texts(csv_bad))
    non_utf8 = tmp_path / "latin.txt"
    non_utf8.write_bytes("好\n".encode() + b"\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: bytes that are not UTF-8"):
        list(iter_texts(non_utf8))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("content\n好\n", "utf-8")
    assert main(["predict", "--model", str(encoder_dir), "--file", str(nocol)]) == 2
    assert "no column 'text'" in capsys.readouterr().err


def test_missing_file_fails_before_loading(tmp_path: Path, capsys) -> None:
    code = main(
        ["predict", "--model", str(tmp_path / "nomodel"), "--file", str(tmp_path / "x.txt")]
    )
    assert code == 2 and "file not found" in capsys.readouterr().err


@pytest.mark.parametrize("ending", ["quit\n", "exit\n", ""])  # "" = Ctrl-D (end of input)
def test_interactive(encoder_dir: Path, ending: str) -> None:
    clf = Classifier.load(encoder_dir)
    stdin = io.StringIO("质量很好\n\n太差了\n" + ending + "不会被读到\n" * (ending != ""))
    stdout = io.StringIO()
    assert interactive(clf, stdin, stdout) == 0
    out = stdout.getvalue()
    assert out.count("→") == 2 and "不会被读到" not in out
    assert "negative" in out and "positive" in out


def test_interactive_cli(encoder_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("很好\nexit\n"))
    assert main(["predict", "--model", str(encoder_dir), "--interactive"]) == 0
    assert capsys.readouterr().out.count("→") == 1
