"""Streaming prediction over files of any size: read a chunk, predict, write, repeat."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from zhtune.data.readers import BOM, detect_format
from zhtune.errors import DataError

CHUNK = 2048


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="run directory, model directory or HF hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument(
        "--file", help="a .txt (one text a line), .csv/.tsv or .jsonl file (column --text-column)"
    )
    p.add_argument("--out", help="with --file: write predictions as JSONL here (default: stdout)")
    p.add_argument(
        "--text-column", default="text", help="text column / field for --file (default: text)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="apply the temperature fitted by `zhtune evaluate`",
    )


def run_cli(ns) -> int:
    from zhtune.classifier import Classifier

    clf = Classifier.load(ns.model, calibrated=ns.calibrated)
    if ns.text:
        for text, pred in zip(ns.text, clf.predict(ns.text, batch_size=ns.batch_size), strict=True):
            print(json.dumps({"text": text, **pred}, ensure_ascii=False))
        return 0
    n = predict_file(clf, ns.file, ns.out, text_column=ns.text_column, batch_size=ns.batch_size)
    if ns.out:
        print(f"{n} predictions written to {ns.out}", file=sys.stderr)
    return 0


def iter_texts(path: str | Path, text_column: str = "text") -> Iterator[tuple[int, str]]:
    """Yield (line number, text) without loading the file; malformed rows raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", str(path))
    kind = detect_format(path)
    with path.open("r", encoding="utf-8", errors="strict", newline="") as fh:
        try:
            if kind in ("csv", "tsv"):
                reader = csv.DictReader(fh, delimiter="\t" if kind == "tsv" else ",")
                fields = [f.lstrip(BOM) for f in (reader.fieldnames or [])]
                reader.fieldnames = fields
                if text_column not in fields:
                    raise DataError(
                        f"no column {text_column!r}; the header has: {', '.join(fields)} (set --text-column)",
                        str(path),
                        1,
                    )
                for rec in reader:
                    text = rec.get(text_column)
                    if not text or not text.strip():
                        raise DataError("empty text", str(path), reader.line_num)
                    yield reader.line_num, text
            else:
                for no, line in enumerate(fh, start=1):
                    line = line.lstrip(BOM) if no == 1 else line
                    if not line.strip():
                        continue
                    if kind == "jsonl":
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DataError(f"invalid JSON ({e.msg})", str(path), no) from None
                        text = obj.get(text_column) if isinstance(obj, dict) else None
                        if not isinstance(text, str) or not text.strip():
                            raise DataError(
                                f"no non-empty string field {text_column!r}", str(path), no
                            )
                        yield no, text
                    else:
                        yield no, line.rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(
                f"bytes that are not UTF-8 (offset {e.start} of a read block)", str(path)
            ) from None


def predict_file(
    clf, path: str | Path, out: str | Path | None, text_column: str = "text", batch_size: int = 32
) -> int:
    """Predict every text of ``path`` and write JSONL rows (line, text, label, confidence, probs)."""
    sink = Path(out).open("w", encoding="utf-8") if out else sys.stdout
    n = 0
    try:
        with tqdm(
            total=Path(path).stat().st_size,
            unit="B",
            unit_scale=True,
            desc="predict",
            disable=out is None,
        ) as bar:
            chunk: list[tuple[int, str]] = []

            def flush() -> None:
                nonlocal n
                preds = clf.predict([t for _, t in chunk], batch_size=batch_size)
                for (no, text), p in zip(chunk, preds, strict=True):
                    sink.write(
                        json.dumps({"line": no, "text": text, **p}, ensure_ascii=False) + "\n"
                    )
                    bar.update(len(text.encode("utf-8")) + 1)
                n += len(chunk)
                chunk.clear()

            for item in iter_texts(path, text_column):
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    flush()
            if chunk:
                flush()
    finally:
        if out:
            sink.close()
    return n
