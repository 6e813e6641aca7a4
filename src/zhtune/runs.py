"""The run directory contract.

Every command that produces a model writes one directory holding:

- ``zhtune.json``: which kind of model it is (``baseline``, ``encoder``, ...), its label
  names and whatever its loader needs, so :meth:`zhtune.Classifier.load` needs no flag;
- ``config.yaml``: the resolved config; ``data.json``: the data report (sizes, skips);
- ``metrics.json`` (test split), ``predictions.jsonl``, ``history.jsonl``, figures (PNG);
- the model itself (Hugging Face format with safetensors for neural models).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zhtune import __version__
from zhtune.errors import ZhtuneError

MANIFEST = "zhtune.json"


def prepare_out_dir(out: str | Path) -> Path:
    """Create the output directory and check it is writable before any work starts."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ZhtuneError(f"cannot write to output directory {path}: {e.strerror or e}") from None
    return path


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically (temp file + rename), UTF-8, Chinese kept readable."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_manifest(out: str | Path, kind: str, labels: list[str], **extra: object) -> None:
    write_json(
        Path(out) / MANIFEST,
        {"kind": kind, "labels": list(labels), "zhtune_version": __version__, **extra},
    )


def read_manifest(path: str | Path) -> dict | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ZhtuneError(f"{f}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise ZhtuneError(f"{f}: missing field 'kind'")
    return data


def prediction_rows(texts: list[str], gold: list[str] | None, preds: list[dict]) -> Iterable[dict]:
    for i, (text, p) in enumerate(zip(texts, preds, strict=True)):
        row = {"text": text}
        if gold is not None:
            row["gold"] = gold[i]
        row.update(p)
        yield row
