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
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zhtune import __version__
from zhtune.errors import ModelLoadError, ZhtuneError

log = logging.getLogger("zhtune")

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


# --- model directories: weights from safetensors only ----------------------------------
def check_safetensors(path: Path, allow_pickle: bool = False) -> None:
    """Refuse a local model directory whose weights are not safetensors, or whose safetensors
    files are truncated or have a corrupt header (a clear error instead of a Rust one)."""
    if not path.is_dir():
        return
    found = sorted(path.glob("*.safetensors"))
    if found:
        for f in found:
            check_safetensors_file(f)
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled and not allow_pickle:
        raise ModelLoadError(
            f"{path}: weights are only in pickle files ({', '.join(pickled)}); zhtune loads "
            "safetensors only. Convert them, or pass --allow-pickle if you trust the source."
        )
    if not pickled:
        raise ModelLoadError(f"{path}: no model weights (*.safetensors) found")
    log.warning(
        "%s: loading pickle weights (%s) because of --allow-pickle; only do this for files "
        "you trust (torch.load runs with weights_only=True)",
        path,
        ", ".join(pickled),
    )


def check_safetensors_file(f: Path) -> None:
    """The header parses and its tensors cover the file exactly (truncation, corrupt header).

    Flipped bits inside the tensor data cannot be detected: safetensors has no checksum."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="np"):
            pass
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(
            f"{f}: not a valid safetensors file (truncated or corrupt: {e}); "
            "copy or download the model again"
        ) from None


# --- built-in base models: `--model builtin:NAME` ---------------------------------------
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS_DIR = Path(__file__).parent / "assets" / "models"  # package data
SHA256SUMS = "SHA256SUMS"


def builtin_models() -> dict[str, Path]:
    """The base models shipped with zhtune: name -> directory (with its SHA256SUMS)."""
    root = BUILTIN_MODELS_DIR
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if (d / SHA256SUMS).is_file()}


def resolve_model(ref: str) -> str:
    """``builtin:NAME`` -> the shipped model's directory (sha256-checked); anything else as is.

    The one place a ``--model`` reference to a shipped base checkpoint is resolved."""
    if not isinstance(ref, str) or not ref.strip().startswith(BUILTIN_PREFIX):
        return ref
    name = ref.strip()[len(BUILTIN_PREFIX) :].strip()
    found = builtin_models()
    if name not in found:
        avail = ", ".join(BUILTIN_PREFIX + n for n in found) or "none are shipped in this version"
        raise ModelLoadError(f"--model {ref}: no built-in model {name!r} (available: {avail})")
    verify_sha256(found[name])
    return str(found[name])


def verify_sha256(folder: Path) -> dict[str, str]:
    """Check every file listed in ``folder/SHA256SUMS`` (``HEX  NAME`` lines); returns them."""
    import hashlib

    sums = {}
    listing = folder / SHA256SUMS
    for no, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        f = folder / name.strip()
        if not f.is_file():
            raise ModelLoadError(f"{listing}:{no}: {name.strip()} is missing; reinstall zhtune")
        actual = hashlib.sha256(f.read_bytes()).hexdigest()
        if actual != digest.strip():
            raise ModelLoadError(
                f"{listing}:{no}: {name.strip()} has sha256 {actual[:12]}..., expected "
                f"{digest.strip()[:12]}...: the file is corrupt; reinstall zhtune"
            )
        sums[name.strip()] = actual
    return sums
