"""zhtune data --find-label-errors (cleanlab on out-of-fold TF-IDF) and --drop-label-errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import labelled_rows, write_csv
from zhtune.cli import main

# flipped rows: copies with "！！"/"。。" suffixes, whose siblings make the true label obvious
FLIP = (44, 55, 62, 71)


def _files(tmp_path: Path) -> tuple[Path, Path, Path, list[tuple[str, str]]]:
    rows = labelled_rows(4)
    other = {"positive": "negative", "negative": "positive"}
    noisy = [(t, other[lab]) if i in FLIP else (t, lab) for i, (t, lab) in enumerate(rows)]
    train = write_csv(tmp_path / "train.csv", noisy)
    dev = write_csv(tmp_path / "dev.csv", labelled_rows(1))
    test = write_csv(tmp_path / "test.csv", labelled_rows(1))
    return train, dev, test, noisy


def test_flipped_labels_are_found_and_dropped(tmp_path: Path, capsys) -> None:
    train, dev, test, noisy = _files(tmp_path)
    data = ["--train", str(train), "--dev", str(dev), "--test", str(test)]
    out = tmp_path / "le"
    assert main(["data", *data, "--find-label-errors", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    with (out / "label_issues.csv").open(encoding="utf-8") as fh:
        issues = list(csv.DictReader(fh))
    assert list(issues[0]) == ["source", "line", "text", "given_label", "suggested_label", "score"]
    flagged_lines = {int(r["line"]) for r in issues}
    assert {i + 2 for i in FLIP} <= flagged_lines  # line 1 is the header
    assert len(issues) <= len(FLIP) + 3
    for r in issues:
        text, label = noisy[int(r["line"]) - 2]
        assert (r["text"], r["given_label"]) == (text, label)
        assert r["source"] == str(train)
    flipped = [r for r in issues if int(r["line"]) - 2 in FLIP]
    assert all(r["suggested_label"] != r["given_label"] for r in flipped)
    scores = [float(r["score"]) for r in issues]
    assert all(0 <= s <= 1 for s in scores)
    assert summary["rows_checked"] == len(noisy) and summary["rows_flagged"] == len(issues)
    assert json.loads((out / "label_issues.json").read_text())["rows_flagged"] == len(issues)

    run = tmp_path / "b"
    args = ["baseline", *data, "--min-df", "1", "--out", str(run)]
    assert main([*args, "--drop-label-errors", str(out / "label_issues.csv")]) == 0
    report = json.loads((run / "data.json").read_text())
    assert report["label_errors_dropped"] == len(issues)
    assert report["sizes"]["train"] == len(noisy) - len(issues)
    assert report["sizes"]["test"] == len(labelled_rows(1))  # test rows untouched


def test_given_model_probabilities(tmp_path: Path, capsys) -> None:
    train, dev, test, noisy = _files(tmp_path)
    data = ["--train", str(train), "--dev", str(dev), "--test", str(test)]
    assert main(["baseline", *data, "--min-df", "1", "--out", str(tmp_path / "b")]) == 0
    out = tmp_path / "le"
    cmd = ["data", *data, "--find-label-errors", "--model", str(tmp_path / "b"), "--out", str(out)]
    capsys.readouterr()
    assert main(cmd) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["probabilities"].startswith("given model")
    assert summary["rows_checked"] == len(noisy)


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    rows = [("很好很好", "positive"), ("太差了", "negative")] * 2
    train = write_csv(tmp_path / "t.csv", rows)
    dev = write_csv(tmp_path / "d.csv", rows)
    data = ["--train", str(train), "--dev", str(dev), "--test", str(dev)]
    assert main(["data", *data, "--find-label-errors", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4 rows, 5 folds" in err
    assert main(["data", *data, "--find-label-errors", "--folds", "3", "--out", "x"]) == 2
    assert "smallest class has 2 training rows" in capsys.readouterr().err
    assert main(["data", *data, "--find-label-errors"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["data", *data, "--drop-label-errors", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: file not found" in capsys.readouterr().err
    assert main(["data", *data, "--drop-label-errors", str(train)]) == 2
    assert "not a label_issues.csv" in capsys.readouterr().err
