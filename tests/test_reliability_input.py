"""Reliability: bad input everywhere (docs/reliability.md, "Bad input").

Every command that reads user data (data, baseline, pretrain, finetune, lora, evaluate,
predict) runs on a matrix of broken files, in process (``zhtune.cli.main``), with tiny
models. ``EXPECT`` is the documented behaviour of each (case, command):

- ``Err(line, words, reason)``: exit 2, one line naming ``FILE:LINE`` (``FILE:`` alone when
  there is no line, e.g. an empty file), before any training; with ``--on-bad-row skip``
  the row is skipped and counted under ``reason`` (data.json / the predict summary);
- ``Ok(check)``: accepted, with what is reported (BOM removed with a warning, duplicates
  kept and counted, a 1 MB text truncated to max_length by the model commands);
- ``Skip(reason)``: pretrain always skips malformed lines and counts them in data.json.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import labelled_rows
from test_reliability_helpers import tiny_bert_classifier, tiny_qwen2, tiny_roberta_mlm
from zhtune.cli import main

QUICK = ["--max-steps", "1", "--eval-every", "1", "--batch-size", "8", "--max-length", "32",
         "--progress", "false", "--report-to", "none"]  # fmt: skip
GOOD = labelled_rows(3)  # 60 rows, lines 2..61 of a CSV
AT = 5  # bad rows go after the 5th good row: line 7 of a CSV (line 6 of a .txt)
# ~1 MB of UTF-8 (~370,000 characters), not periodic (pretrain would deduplicate the chunks)
ONE_MB = "，".join(random.Random(0).choices([t for t, _ in labelled_rows(1)], k=40_000))


def _csv(rows: list[tuple[str, str]], header: tuple[str, str] | None = ("text", "label")) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _insert(raw_line: bytes, txt: bool = False) -> bytes:
    if txt:
        lines = [t.encode() + b"\n" for t, _ in GOOD]
        return b"".join(lines[:AT]) + raw_line + b"".join(lines[AT:])
    return _csv(GOOD[:AT]) + raw_line + _csv(GOOD[AT:], header=None)


def _txt(rows) -> bytes:
    return "".join(t + "\n" for t, _ in rows).encode()


# case -> (CSV bytes, TXT bytes for pretrain or None)
FILES: dict[str, tuple[bytes, bytes | None]] = {
    "empty file": (b"", b""),
    "header only": (b"text,label\n", None),
    "missing columns": (_csv(GOOD, header=("content", "category")), None),
    "non-UTF-8 bytes": (
        _insert("质量很好".encode() + b"\xff\xfe,positive\n"),
        _insert("质量很好".encode() + b"\xff\xfe\n", txt=True),
    ),
    "BOM at file start": (b"\xef\xbb\xbf" + _csv(GOOD), b"\xef\xbb\xbf" + _txt(GOOD)),
    "BOM inside the file": (
        _insert("\ufeff质量很好,positive\n".encode()),
        _insert("\ufeff质量很好\n".encode(), txt=True),
    ),
    "empty text": (_insert(b'"",positive\n'), _insert(b"   \n", txt=True)),
    "NUL byte": (_insert("质\x00量,positive\n".encode()), _insert("质\x00量\n".encode(), txt=True)),
    "mixed label types": (_insert("质量很好,1\n".encode()), None),
    "unknown label in the test split": (_insert("质量一般,neutral\n".encode()), None),
    "duplicated rows": (_csv(GOOD + GOOD[:10]), _txt(GOOD + GOOD[:10])),
    "1 MB text": (_insert(f"{ONE_MB},positive\n".encode()), _insert(f"{ONE_MB}\n".encode(), True)),
}


@dataclass
class Err:
    line: int | None
    words: str
    reason: str | None = None  # counted under this name with --on-bad-row skip


@dataclass
class Ok:
    check: str  # "bom", "duplicates", "long", "rows", "blank"


@dataclass
class Skip:
    reason: str


NA = None
DATA = ("data", "baseline", "finetune", "lora", "evaluate")
COMMANDS = (*DATA, "predict", "pretrain")


def _same(spec, **override) -> dict:
    return {**{c: spec for c in DATA}, **override}


EXPECT: dict[str, dict[str, object]] = {
    "empty file": _same(
        Err(None, "the file is empty"),
        predict=Err(None, "the file is empty"),
        pretrain=Err(None, "no data rows"),
    ),  # fmt: skip
    "header only": _same(Err(None, "no data rows"), predict=Ok("rows"), pretrain=NA),
    "missing columns": _same(
        Err(1, "missing column(s) 'text', 'label'"), predict=Err(1, "no column 'text'"), pretrain=NA
    ),  # fmt: skip
    "non-UTF-8 bytes": _same(
        Err(AT + 2, "not UTF-8", "non_utf8"),
        predict=Err(AT + 2, "not UTF-8", "non_utf8"),
        pretrain=Skip("non_utf8"),
    ),  # fmt: skip
    "BOM at file start": _same(Ok("bom"), predict=Ok("bom"), pretrain=Ok("bom")),
    "BOM inside the file": _same(
        Err(AT + 2, "byte-order mark", "bom"), predict=Ok("rows"), pretrain=Skip("bom")
    ),  # fmt: skip
    "empty text": _same(
        Err(AT + 2, "the text is empty", "empty_text"),
        predict=Err(AT + 2, "the text is empty", "empty_text"),
        pretrain=Ok("blank"),
    ),  # fmt: skip
    "NUL byte": _same(
        Err(AT + 2, "NUL byte", "nul_byte"),
        predict=Err(AT + 2, "NUL byte", "nul_byte"),
        pretrain=Skip("nul_byte"),
    ),  # fmt: skip
    "mixed label types": _same(
        Err(AT + 2, "use one kind", "mixed_label_types"), predict=Ok("rows"), pretrain=NA
    ),  # fmt: skip
    "unknown label in the test split": _same(
        Err(AT + 2, "not among the training labels", "unknown_label"), predict=NA, pretrain=NA
    ),  # fmt: skip
    "duplicated rows": _same(Ok("duplicates"), predict=Ok("rows"), pretrain=Ok("duplicates")),
    "1 MB text": _same(Ok("long"), predict=Ok("long"), pretrain=Ok("long")),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("input")
    good = root / "good.csv"
    good.write_bytes(_csv(GOOD))
    files = {}
    for case, (raw, txt) in FILES.items():
        slug = case.replace(" ", "-")
        (root / f"{slug}.csv").write_bytes(raw)
        files[case] = root / f"{slug}.csv"
        if txt is not None:
            (root / f"{slug}.txt").write_bytes(txt)
            files[case + ".txt"] = root / f"{slug}.txt"
    return {
        "root": root,
        "good": good,
        "files": files,
        "roberta": tiny_roberta_mlm(root / "roberta"),
        "qwen2": tiny_qwen2(root / "qwen2"),
        "classifier": tiny_bert_classifier(root / "classifier"),
    }


def argv_for(
    env: dict, command: str, case: str, out: Path, skip: bool = False
) -> tuple[list, Path]:
    """(argv, the broken file) for running ``command`` on ``case``."""
    f = env["files"][case + ".txt" if command == "pretrain" else case]
    if case == "unknown label in the test split":
        data = ["--train", str(env["good"]), "--test", str(f)]
    else:
        data = ["--train", str(f)]
    bad = ["--on-bad-row", "skip"] if skip else []
    argv = {
        "data": ["data", *data, *bad],
        "baseline": ["baseline", *data, *bad, "--out", str(out)],
        "finetune": [
            "finetune",
            *data,
            *bad,
            "--model",
            str(env["roberta"]),
            *QUICK,
            "--out",
            str(out),
        ],  # fmt: skip
        "lora": ["lora", *data, *bad, "--model", str(env["qwen2"]), *QUICK, "--out", str(out)],
        "evaluate": [
            "evaluate",
            *data,
            *bad,
            "--model",
            str(env["classifier"]),
            "--out",
            str(out),
            "--no-robustness",
        ],  # fmt: skip
        "predict": [
            "predict",
            "--model",
            str(env["classifier"]),
            "--file",
            str(f),
            *bad,
            "--out",
            str(out / "predictions.jsonl"),
        ],  # fmt: skip
        "pretrain": [
            "pretrain",
            "--text-files",
            str(f),
            "--hidden-size",
            "32",
            "--num-heads",
            "2",
            "--intermediate-size",
            "64",
            "--num-hidden-layers",
            "1",
            "--max-seq-length",
            "32",
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--cache-dir",
            "none",
            "--report-to",
            "none",
            "--num-threads",
            "1",
            "--out",
            str(out),
        ],  # fmt: skip
    }[command]
    return argv, f


def run(argv: list[str], capsys) -> tuple[int, str, str, float]:
    capsys.readouterr()
    t = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t
    cap = capsys.readouterr()
    return rc, cap.out, cap.err, seconds


def data_report(command: str, out: Path, stdout: str) -> dict:
    if command == "data":
        return json.loads(stdout)
    return json.loads((out / "data.json").read_text(encoding="utf-8"))


def warnings_of(command: str, out: Path, stdout: str, stderr: str, caplog) -> str:
    if command == "predict":
        return stderr
    report = data_report(command, out, stdout)
    ws = report.get("warnings") or report.get("bad_rows", {}).get("warnings") or []
    return "\n".join(ws) + caplog.text


CASES = [(case, cmd) for case in FILES for cmd in COMMANDS if EXPECT[case][cmd] is not NA]


@pytest.mark.parametrize(("case", "command"), CASES, ids=[f"{c}-{m}" for c, m in CASES])
def test_bad_input(env, case, command, tmp_path, capsys, caplog) -> None:
    spec = EXPECT[case][command]
    out = tmp_path / "out"
    if command == "predict":
        out.mkdir()
    argv, f = argv_for(env, command, case, out)
    caplog.set_level("WARNING", logger="zhtune")
    rc, stdout, stderr, seconds = run(argv, capsys)
    lines = [x for x in stderr.strip().splitlines() if x]
    if isinstance(spec, Err):
        where = f"{f}:{spec.line}:" if spec.line else f"{f}:"
        assert rc == 2, (rc, lines[-3:])
        assert lines[-1].startswith(f"zhtune {command}: error: {where}"), lines[-1]
        assert spec.words in lines[-1], lines[-1]
        assert "Traceback" not in stderr
        # refused before any training: no checkpoint, no model
        assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()
        assert seconds < 30, seconds
        return
    assert rc == 0, lines[-3:]
    if isinstance(spec, Skip):
        report = data_report(command, out, stdout)
        assert report["bad_rows"]["skipped"] == {spec.reason: 1}, report["bad_rows"]
        return
    check = spec.check
    if check == "bom":
        assert "byte-order mark" in warnings_of(command, out, stdout, stderr, caplog)
        if command == "predict":
            first = json.loads(
                (out / "predictions.jsonl").read_text(encoding="utf-8").split("\n")[0]
            )
            assert first["text"] == GOOD[0][0]  # no BOM left in the text
    elif check == "duplicates":
        if command == "pretrain":
            assert data_report(command, out, stdout)["duplicate_chunks_dropped"] >= 10
        else:
            report = data_report(command, out, stdout)
            assert report["duplicate_texts_in_train"] >= 1, report
            assert "duplicate" in warnings_of(command, out, stdout, stderr, caplog)
    elif check == "rows" and command == "predict":
        n_rows = 0 if case == "header only" else len(GOOD) + (10 if "duplicated" in case else 0)
        n_rows += 1 if case in ("BOM inside the file", "mixed label types") else 0
        got = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(got) == n_rows, (len(got), n_rows)
    elif check == "long":
        assert seconds < 120, seconds
        if command == "predict":
            _assert_truncated(env, out)
        elif command == "pretrain":
            report = data_report(command, out, stdout)
            assert report["train_chunks"] + report["eval_chunks"] > 1000  # chunked, not cut


def _assert_truncated(env: dict, out: Path) -> None:
    """The 1 MB text gets the probabilities of its first max_length tokens."""
    from zhtune import Classifier

    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    long = next(r for r in rows if len(r["text"]) > 10_000)
    prefix = Classifier.load(env["classifier"]).predict(ONE_MB[:200])  # > 64 tokens
    got = np.array(list(long["probs"].values()))
    want = np.array(list(prefix["probs"].values()))
    assert np.allclose(got, want, atol=1e-6), (got, want)


# --- --on-bad-row skip -------------------------------------------------------------------
SKIPPABLE = [
    (case, cmd)
    for case in FILES
    for cmd in ("data", "baseline", "evaluate", "predict")
    if isinstance(EXPECT[case][cmd], Err) and EXPECT[case][cmd].reason
]


@pytest.mark.parametrize(("case", "command"), SKIPPABLE, ids=[f"{c}-{m}" for c, m in SKIPPABLE])
def test_on_bad_row_skip_counts(env, case, command, tmp_path, capsys) -> None:
    spec = EXPECT[case][command]
    out = tmp_path / "out"
    if command == "predict":
        out.mkdir()
    argv, _ = argv_for(env, command, case, out, skip=True)
    rc, stdout, stderr, _ = run(argv, capsys)
    assert rc == 0, stderr[-2000:]
    if command == "predict":
        assert f"1 malformed rows skipped ({spec.reason}: 1;" in stderr, stderr
    else:
        assert data_report(command, out, stdout)["skipped"] == {spec.reason: 1}


MESSY_LINES = [
    "质量很好".encode() + b"\xff\xfe,positive\n",  # non_utf8
    "\ufeff质量很好,positive\n".encode(),  # bom
    b'"",positive\n',  # empty_text
    "质\x00量,positive\n".encode(),  # nul_byte
    "质量很好,1\n".encode(),  # mixed_label_types
]


@pytest.mark.parametrize("command", ["finetune", "lora"])
def test_training_commands_skip_and_count_every_bad_row(env, command, tmp_path, capsys) -> None:
    """One run each on a file with every kind of skippable row (and an unknown test label):
    training goes ahead on the good rows and data.json counts each skip."""
    train = tmp_path / "messy.csv"
    body = b"".join(MESSY_LINES)
    train.write_bytes(b"\xef\xbb\xbf" + _csv(GOOD[:AT]) + body + _csv(GOOD[AT:], header=None))
    test = tmp_path / "test.csv"
    test.write_bytes(FILES["unknown label in the test split"][0])
    out = tmp_path / "out"
    model = env["roberta" if command == "finetune" else "qwen2"]
    rc, _, stderr, _ = run([command, "--train", str(train), "--test", str(test), "--on-bad-row",
                            "skip", "--model", str(model), *QUICK, "--out", str(out)], capsys)  # fmt: skip
    assert rc == 0, stderr[-2000:]
    report = json.loads((out / "data.json").read_text(encoding="utf-8"))
    want = ("non_utf8", "bom", "empty_text", "nul_byte", "mixed_label_types", "unknown_label")
    assert report["skipped"] == dict.fromkeys(want, 1)
    assert any("byte-order mark" in w for w in report["warnings"])
    assert (out / "model.safetensors").is_file() or (out / "adapter_model.safetensors").is_file()


def test_mixed_label_types_jsonl(env, tmp_path, capsys) -> None:
    """JSON integers and names in one file: error naming the line."""
    f = tmp_path / "mixed.jsonl"
    rows = [{"text": t, "label": y} for t, y in GOOD[:AT]] + [{"text": "质量很好", "label": 1}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rc, _, stderr, _ = run(["data", "--train", str(f)], capsys)
    assert rc == 2 and f"{f}:{AT + 1}:" in stderr and "use one kind" in stderr, stderr
