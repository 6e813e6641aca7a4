"""``zhtune predict``: one text, a file of any size (streamed), an interactive prompt, a demo.

Files are read a line at a time and predicted in chunks of ``CHUNK`` texts, so memory does
not grow with the file: a 1M-line file streams through with a progress bar (bytes read).
A malformed row stops the run with ``file:line: reason`` unless ``--on-bad-row skip``, which
counts the skipped rows and reports them at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from zhtune.data.readers import BOM, BadRows, detect_format
from zhtune.errors import DataError

CHUNK = 2048

DEMO_TEXTS = [
    "质量很好，物流也快，非常满意！",
    "完全不能用，客服也不理人，太失望了。",
    "这本书内容一般，不过印刷还不错。",
    "酒店位置方便，房间干净，早餐种类很多。",
    "电池续航太差，用半天就没电了。",
    "央行宣布下调存款准备金率0.5个百分点。",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, model directory or HF hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument(
        "--file", help="a .txt (one text a line), .csv/.tsv or .jsonl file (column --text-column)"
    )
    src.add_argument(
        "--interactive", action="store_true", help="type texts at a prompt; quit/exit/Ctrl-D leave"
    )
    src.add_argument("--demo", action="store_true", help="classify a few built-in Chinese texts")
    p.add_argument("--out", help="with --file: write predictions as JSONL here (default: stdout)")
    p.add_argument(
        "--text-column", default="text", help="text column / field for --file (default: text)"
    )
    p.add_argument(
        "--file-format",
        default="auto",
        choices=["auto", "txt", "csv", "tsv", "jsonl"],
        help="format of --file (default: from the extension)",
    )
    p.add_argument(
        "--on-bad-row",
        default="error",
        choices=["error", "skip"],
        help="a malformed row in --file: stop with file:line (error) or skip and count it",
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="PyTorch dynamic int8 quantization of the Linear layers at load time (encoder)",
    )
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="apply the temperature fitted by `zhtune evaluate`",
    )
    from zhtune.classifier import add_load_args

    add_load_args(p)
    from zhtune.device import add_device_arg

    add_device_arg(p, "; --int8 and ONNX models run on CPU")
    p.add_argument(
        "--threads",
        type=int,
        help="inference threads (default: the cores other processes leave free)",
    )
    p.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local: this process; ray: Ray Data actors, on a cluster too (see docs/scaling.md)",
    )
    from zhtune.integrations.ray import add_ray_arguments

    add_ray_arguments(p)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.classifier import Classifier
    from zhtune.errors import ZhtuneError

    if ns.batch_size < 1:
        raise ZhtuneError(f"--batch-size must be >= 1, got {ns.batch_size}")
    if ns.out and not ns.file:
        raise ZhtuneError("--out goes with --file")
    if ns.file:  # fail on a missing/unknown file before the model loads
        check_file(ns.file, ns.file_format)
    if ns.engine == "ray":
        from zhtune.integrations.ray import run_ray_cli

        return run_ray_cli(ns)
    if ns.threads:
        os.environ["ZHTUNE_THREADS"] = str(ns.threads)
    kw: dict = {"int8": True} if ns.int8 else {}
    kw["device"] = ns.device
    if ns.allow_pickle:
        kw["allow_pickle"] = True
    clf = Classifier.load(ns.model, calibrated=ns.calibrated, skip_verify=ns.skip_verify, **kw)
    if ns.int8 and clf.kind not in ("encoder", "onnx"):
        print(f"note: --int8 has no effect on a {clf.kind} model", file=sys.stderr)
    if ns.text:
        for text, pred in zip(ns.text, clf.predict(ns.text, batch_size=ns.batch_size), strict=True):
            print(json.dumps({"text": text, **pred}, ensure_ascii=False))
        return 0
    if ns.demo:
        for text, pred in zip(DEMO_TEXTS, clf.predict(DEMO_TEXTS), strict=True):
            print(format_prediction(text, pred))
        return 0
    if ns.interactive:
        return interactive(clf, sys.stdin, sys.stdout)
    bad = BadRows(ns.on_bad_row)
    n = predict_file(
        clf,
        ns.file,
        ns.out,
        text_column=ns.text_column,
        batch_size=ns.batch_size,
        bad=bad,
        fmt=ns.file_format,
    )
    skipped = sum(bad.counts.values())
    msg = f"{n} predictions" + (f" written to {ns.out}" if ns.out else "")
    if skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.counts.items()))
        first = next(iter(bad.examples.values()))
        msg += f"; {skipped} malformed rows skipped ({reasons}; first: {first})"
    print(msg, file=sys.stderr)
    return 0


# --- human-readable output -------------------------------------------------------------------
def bar(p: float, width: int = 20) -> str:
    n = int(round(p * width))
    return "█" * n + "·" * (width - n)


def format_prediction(text: str, pred: dict) -> str:
    short = text if len(text) <= 40 else text[:39] + "…"
    if "labels" in pred:  # multi-label: the label set, then every independent probability
        lines = [f"{short}\n  → {', '.join(pred['labels']) or '(no label)'}"]
    else:
        lines = [f"{short}\n  → {pred['label']} ({pred['confidence']:.3f})"]
    for name, p in sorted(pred["probs"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<12} {bar(p)} {p:.3f}")
    return "\n".join(lines)


def interactive(clf, stdin: IO[str], stdout: IO[str]) -> int:
    """A prompt loop; ``quit``, ``exit``, ``:q``, Ctrl-D or Ctrl-C leave with status 0."""
    tty = stdin.isatty()
    print(f"model: {clf.path} ({clf.kind}); labels: {', '.join(clf.labels)}", file=stdout)
    print("type a text and press Enter; quit, exit or Ctrl-D to leave", file=stdout)
    while True:
        if tty:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print(file=stdout)
                return 0
        else:
            stdout.write("> ")
            stdout.flush()
            line = stdin.readline()
            if not line:  # end of input
                print(file=stdout)
                return 0
        text = line.strip()
        if text.lower() in ("quit", "exit", ":q", "退出"):
            if not tty:
                print(file=stdout)
            return 0
        if not text:
            continue
        print(format_prediction(text, clf.predict(text)), file=stdout)
        stdout.flush()


# --- streaming file reading ------------------------------------------------------------------
class _ByteLines:
    """Lines of a file decoded one at a time, with 1-based numbers and bytes consumed so far.
    A line that is not UTF-8 (or holds a NUL byte) goes to ``bad`` and is not yielded."""

    def __init__(self, path: Path, bad: BadRows) -> None:
        self.path, self.bad = path, bad
        self.no = 0
        self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        with self.path.open("rb") as fh:
            for raw in fh:
                self.no += 1
                self.bytes += len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.bad.add(
                        str(self.path),
                        self.no,
                        "non_utf8",
                        f"bytes that are not UTF-8 at column {e.start + 1}",
                    )
                    continue
                if self.no == 1 and line.startswith(BOM):
                    line = line.lstrip(BOM)
                    print(
                        f"warning: {self.path}: a UTF-8 byte-order mark (BOM) at the start of "
                        "the file was removed",
                        file=sys.stderr,
                    )
                if "\x00" in line:
                    self.bad.add(str(self.path), self.no, "nul_byte", "a NUL byte (binary file?)")
                    continue
                yield line


def check_file(path: str | Path, fmt: str = "auto") -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", str(path))
    return detect_format(path, fmt)


def iter_texts(
    path: str | Path,
    text_column: str = "text",
    bad: BadRows | None = None,
    fmt: str = "auto",
    lines: _ByteLines | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) without loading the file. A malformed row raises DataError
    naming the file and line, or (``BadRows("skip")``) is counted in ``bad`` and skipped."""
    path = Path(path)
    kind = check_file(path, fmt)
    bad = bad or BadRows()
    lines = lines or _ByteLines(path, bad)
    where = str(path)
    if kind in ("csv", "tsv"):
        reader = csv.reader(iter(lines), delimiter="\t" if kind == "tsv" else ",")
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError("the file is empty", where) from None
        except csv.Error as e:
            raise DataError(f"cannot parse the header ({e})", where, lines.no) from None
        if text_column not in header:
            raise DataError(
                f"no column {text_column!r}; the header has: {', '.join(header)} (set --text-column)",
                where,
                lines.no,
            )
        ti = header.index(text_column)
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                bad.add(where, lines.no, "unparseable", f"cannot parse the row ({e})")
                continue
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                bad.add(
                    where,
                    lines.no,
                    "unparseable",
                    f"{len(rec)} fields but the header has {len(header)} (a stray separator or quote?)",
                )
                continue
            if not rec[ti].strip():
                bad.add(where, lines.no, "empty_text", "the text is empty")
                continue
            yield lines.no, rec[ti].strip()
    for line in lines:
        if not line.strip():
            continue
        if kind == "txt":
            yield lines.no, line.strip()
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.add(where, lines.no, "unparseable", f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        text = obj.get(text_column) if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            what = "a JSON object" if isinstance(obj, dict) else "not a JSON object"
            bad.add(
                where,
                lines.no,
                "missing_text",
                f"no non-empty string field {text_column!r} ({what}; set --text-column)",
            )
            continue
        yield lines.no, text.strip()


def predict_file(
    clf,
    path: str | Path,
    out: str | Path | None,
    text_column: str = "text",
    batch_size: int = 32,
    bad: BadRows | None = None,
    fmt: str = "auto",
) -> int:
    """Predict every text of ``path`` and write JSONL rows (line, text, label, confidence,
    probs) to ``out`` (stdout when None). Returns the number of predictions written."""
    path = Path(path)
    check_file(path, fmt)
    bad = bad or BadRows()
    lines = _ByteLines(path, bad)
    sink = Path(out).open("w", encoding="utf-8") if out else sys.stdout
    n = 0
    try:
        with tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="predict",
            # with --out: a bar on a terminal (None = tqdm's "only if a TTY"); stdout: none
            disable=True if out is None else None,
            mininterval=0.5,
        ) as progress:
            chunk: list[tuple[int, str]] = []

            def flush() -> None:
                nonlocal n
                preds = clf.predict([t for _, t in chunk], batch_size=batch_size)
                for (no, text), p in zip(chunk, preds, strict=True):
                    sink.write(
                        json.dumps({"line": no, "text": text, **p}, ensure_ascii=False) + "\n"
                    )
                n += len(chunk)
                chunk.clear()
                progress.update(lines.bytes - progress.n)

            for item in iter_texts(path, text_column, bad, fmt, lines):
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    flush()
            if chunk:
                flush()
            progress.update(lines.bytes - progress.n)
    finally:
        if out:
            sink.close()
        else:
            sink.flush()
    return n
