"""Readers for user data: CSV, TSV, JSONL, folder-per-class trees and saved HF datasets.

Every reader yields :class:`Row` objects and reports each malformed row to a
:class:`BadRows` tracker, which raises a :class:`DataError` naming the file, line and reason
(``on_bad_row="error"``) or counts the skip (``on_bad_row="skip"``). Nothing is dropped or
remapped silently.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhtune.errors import DataError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

BOM = "\ufeff"


@dataclass
class Row:
    text: str
    label: str | None
    source: str
    line: int
    int_label: bool = False  # a JSON integer (not a string) label
    labels: tuple[str, ...] | None = None  # multi-label rows: the label set (may be empty)


@dataclass(frozen=True)
class LabelSets:
    """How multi-label rows give their labels: ``a|b`` (``sep``) in CSV/TSV, or a JSON list."""

    sep: str = "|"
    allow_empty: bool = False

    def parse(self, raw: object) -> tuple[tuple[str, ...] | None, str]:
        """(label set, "") or (None, why it is invalid)."""
        if raw is None or raw == "" or raw == []:
            items: list = []
        elif isinstance(raw, list):
            items = raw
        elif isinstance(raw, str):
            items = raw.split(self.sep)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            items = [raw]
        else:
            return None, f"a label set must be a string or a JSON list, got {type(raw).__name__}"
        out: list[str] = []
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int | str):
                return None, f"each label must be a string or an integer, got {x!r}"
            name = str(x).strip()
            if not name:
                return None, f"an empty label in {raw!r} (separator {self.sep!r})"
            if name not in out:
                out.append(name)
        if not out and not self.allow_empty:
            return (
                None,
                "the label set is empty (use --allow-empty-labels to allow rows with no label)",
            )
        return tuple(out), ""


@dataclass
class BadRows:
    """Counts (or raises on) malformed rows. One per data load."""

    mode: str = "error"
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, path: str, line: int | None, reason: str, detail: str) -> None:
        if self.mode != "skip":
            raise DataError(
                f"{detail} (reason: {reason}; use --on-bad-row skip to skip such rows)", path, line
            )
        self.counts[reason] += 1
        self.examples.setdefault(reason, f"{path}:{line}: {detail}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def summary(self) -> dict:
        return {
            "skipped": dict(self.counts),
            "skipped_total": sum(self.counts.values()),
            "first_example": self.examples,
            "warnings": self.warnings,
        }


def _lines(path: Path, bad: BadRows) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line) pairs; bytes that are not UTF-8 are reported."""
    with path.open("rb") as fh:
        for no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.add(
                    str(path), no, "non_utf8", f"bytes that are not UTF-8 at column {e.start + 1}"
                )
                continue
            if no == 1 and line.startswith(BOM):
                line = line[1:]
                bad.warn(
                    f"{path}: a UTF-8 byte-order mark (BOM) at the start of the file was removed"
                )
            elif BOM in line:
                bad.add(
                    str(path),
                    no,
                    "bom",
                    "a byte-order mark (U+FEFF) inside the file; was it concatenated from several files?",
                )
                continue
            if "\x00" in line:
                bad.add(str(path), no, "nul_byte", "a NUL byte; is this a binary or UTF-16 file?")
                continue
            yield no, line


def _check_row(
    path: str,
    line: int,
    text: object,
    label: object,
    bad: BadRows,
    need_label: bool,
    multi: LabelSets | None = None,
) -> Row | None:
    if text is None:
        bad.add(path, line, "missing_text", "the text field is missing")
        return None
    if not isinstance(text, str):
        bad.add(
            path, line, "unparseable", f"the text field must be a string, got {type(text).__name__}"
        )
        return None
    if not text.strip():
        bad.add(path, line, "empty_text", "the text is empty")
        return None
    if multi is not None and need_label:
        labels, why = multi.parse(label)
        if labels is None:
            bad.add(path, line, "bad_label_set", why)
            return None
        return Row(text.strip(), multi.sep.join(labels), path, line, labels=labels)
    if isinstance(label, list):
        bad.add(path, line, "unparseable", "a list of labels needs --multi-label")
        return None
    if label is None or (isinstance(label, str) and not label.strip()):
        if need_label:
            bad.add(path, line, "missing_label", "the label is missing or empty")
            return None
        return Row(text.strip(), None, path, line)
    if isinstance(label, bool) or not isinstance(label, int | str):
        bad.add(
            path,
            line,
            "unparseable",
            f"a label must be a string or an integer, got {json.dumps(label, ensure_ascii=False)}",
        )
        return None
    return Row(text.strip(), str(label).strip(), path, line)


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix == ".txt":
        return "txt"
    raise DataError(
        f"cannot tell the format from the extension '{suffix}'; use .csv, .tsv, .jsonl or set --file-format",
        str(path),
    )


def read_file(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    bad: BadRows | None = None,
    fmt: str = "auto",
    need_label: bool = True,
    multi: LabelSets | None = None,
) -> list[Row]:
    """Read a CSV/TSV (header row) or JSONL file into rows. ``txt`` is one unlabeled text a line.

    ``multi``: multi-label rows (each row's ``labels`` is its label set)."""
    path = Path(path)
    bad = bad or BadRows()
    if not path.is_file():
        raise DataError("file not found", str(path))
    kind = detect_format(path, fmt)
    if kind == "jsonl":
        rows = _read_jsonl(path, text_column, label_column, bad, need_label, multi)
    elif kind == "txt":
        rows = [
            r
            for no, line in _lines(path, bad)
            if line.strip()
            for r in [_check_row(str(path), no, line.rstrip("\r\n"), None, bad, False)]
            if r
        ]
    else:
        rows = _read_delimited(
            path, "\t" if kind == "tsv" else ",", text_column, label_column, bad, need_label, multi
        )
    if not rows:
        raise DataError(
            "no data rows (the file is empty, has only a header, or every row was skipped)",
            str(path),
        )
    if multi is None:
        _check_label_types(rows, bad, path)
    return [r for r in rows if r is not None]


def _read_jsonl(
    path: Path, tcol: str, lcol: str, bad: BadRows, need_label: bool, multi: LabelSets | None
) -> list[Row]:
    rows = []
    for no, line in _lines(path, bad):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.add(str(path), no, "unparseable", f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            bad.add(str(path), no, "unparseable", "each line must be a JSON object")
            continue
        if tcol not in obj:
            keys = ", ".join(map(str, obj)) or "none"
            bad.add(
                str(path),
                no,
                "missing_text",
                f"no field '{tcol}' (fields: {keys}; set --text-column)",
            )
            continue
        if need_label and lcol not in obj:
            keys = ", ".join(map(str, obj))
            bad.add(
                str(path),
                no,
                "missing_label",
                f"no field '{lcol}' (fields: {keys}; set --label-column)",
            )
            continue
        row = _check_row(str(path), no, obj[tcol], obj.get(lcol), bad, need_label, multi)
        if row:
            row.int_label = isinstance(obj.get(lcol), int)
            rows.append(row)
    return rows


def _read_delimited(
    path: Path,
    delim: str,
    tcol: str,
    lcol: str,
    bad: BadRows,
    need_label: bool,
    multi: LabelSets | None = None,
) -> list[Row]:
    lines = _lines(path, bad)
    line_numbers: list[int] = []

    def feed() -> Iterator[str]:
        for no, line in lines:
            line_numbers.append(no)
            yield line

    reader = csv.reader(feed(), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty", str(path)) from None
    except csv.Error as e:
        raise DataError(f"cannot parse the header ({e})", str(path), 1) from None
    header = [h.strip() for h in header]
    missing = [c for c in ([tcol, lcol] if need_label else [tcol]) if c not in header]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(repr(m) for m in missing)}; the header has: "
            f"{', '.join(header)} (set --text-column / --label-column)",
            str(path),
            line_numbers[0] if line_numbers else 1,
        )
    ti, li = header.index(tcol), (header.index(lcol) if lcol in header else None)
    rows = []
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.add(str(path), line_numbers[-1], "unparseable", f"cannot parse the row ({e})")
            continue
        no = line_numbers[-1]  # the record's last physical line
        if not rec or all(not c.strip() for c in rec):
            continue
        if len(rec) != len(header):
            bad.add(
                str(path),
                no,
                "unparseable",
                f"{len(rec)} fields but the header has {len(header)} (a stray '{delim}' or quote?)",
            )
            continue
        row = _check_row(
            str(path), no, rec[ti], rec[li] if li is not None else None, bad, need_label, multi
        )
        if row:
            rows.append(row)
    return rows


def _check_label_types(rows: list[Row], bad: BadRows, path: Path) -> None:
    """Integer and named labels mixed in one file are an error: which names go with which ids?"""
    from zhtune.data.labels import is_int_label

    labeled = [r for r in rows if r.label is not None]
    if not labeled:
        return

    def kind(r: Row) -> str:
        if r.int_label:
            return "integer"
        return "integer-like string" if is_int_label(r.label or "") else "name"

    first = kind(labeled[0])
    for i, r in enumerate(rows):
        if r is not None and r.label is not None and kind(r) != first:
            bad.add(
                str(path),
                r.line,
                "mixed_label_types",
                f"label {r.label!r} is a {kind(r)} but line {labeled[0].line} has a {first} label; use one kind",
            )
            rows[i] = None  # type: ignore[call-overload]


def read_folder(
    root: str | Path, categories: list[str] | None, max_files: int | None, bad: BadRows
) -> list[Row]:
    """THUCNews layout: ``root/<category>/*.txt``, one document a file, label = folder name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("data_dir is not a directory", str(root))
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if categories:
        unknown = [c for c in categories if c not in found]
        if unknown:
            raise DataError(
                f"categories {unknown} not found; folders here: {', '.join(found) or 'none'}",
                str(root),
            )
        found = list(categories)
    if not found:
        raise DataError("no category folders (expected DATA_DIR/<category>/*.txt)", str(root))
    rows = []
    for cat in found:
        files = sorted((root / cat).glob("*.txt"))[: max_files or None]
        for f in files:
            try:
                text = f.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                bad.add(str(f), None, "non_utf8", f"bytes that are not UTF-8 at offset {e.start}")
                continue
            text = text.removeprefix(BOM)
            if "\x00" in text:
                bad.add(str(f), None, "nul_byte", "a NUL byte; is this a binary file?")
                continue
            row = _check_row(str(f), 1, text, cat, bad, True)
            if row:
                rows.append(row)
    if not rows:
        raise DataError("no documents found", str(root))
    return rows


def read_hf_dir(
    path: str | Path, tcol: str, lcol: str, bad: BadRows
) -> tuple[dict[str, list[Row]], list[str] | None]:
    """A directory written by ``datasets``' ``save_to_disk`` (Arrow files, no pickle).

    Returns rows per split (``validation`` is read as ``dev``) and the ClassLabel names if any.
    """
    from datasets import ClassLabel, Dataset, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"not a saved Hugging Face dataset directory ({e})", str(path)) from None
    splits = {"train": ds} if isinstance(ds, Dataset) else dict(ds)
    names: list[str] | None = None
    out: dict[str, list[Row]] = {}
    for split, d in splits.items():
        name = {"validation": "dev", "valid": "dev"}.get(split, split)
        if name not in ("train", "dev", "test"):
            bad.warn(f"{path}: split '{split}' ignored (expected train, validation/dev, test)")
            continue
        missing = [c for c in (tcol, lcol) if c not in d.column_names]
        if missing:
            raise DataError(
                f"split '{split}' has no column(s) {missing}; columns: {', '.join(d.column_names)} "
                "(set --text-column / --label-column)",
                str(path),
            )
        feat = d.features[lcol]
        if isinstance(feat, ClassLabel):
            names = list(feat.names)
        src = f"{path}[{split}]"
        rows = []
        for i, (text, label) in enumerate(zip(d[tcol], d[lcol], strict=True), start=1):
            if isinstance(feat, ClassLabel) and isinstance(label, int):
                label = feat.names[label] if 0 <= label < len(feat.names) else label
            row = _check_row(src, i, text, label, bad, True)
            if row:
                rows.append(row)
        out[name] = rows
    if "train" not in out:
        raise DataError(f"no 'train' split; splits: {', '.join(splits)}", str(path))
    return out, names
