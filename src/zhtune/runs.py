"""The run directory contract.

Every command that produces a model writes one directory holding:

- ``zhtune.json``: which kind of model it is (``baseline``, ``encoder``, ...), its label
  names and whatever its loader needs, so :meth:`zhtune.Classifier.load` needs no flag;
- ``config.yaml``: the resolved config; ``data.json``: the data report (sizes, skips);
- ``metrics.json`` (test split), ``predictions.jsonl``, ``history.jsonl``, figures (PNG);
- the model itself (Hugging Face format with safetensors for neural models);
- after training (:func:`finish_model_dir`): the sha256 of every weight file in
  ``zhtune.json`` (``weights``), checked by :func:`verify_weights` on every load, and a
  Hugging Face model card ``README.md`` (:func:`write_model_card`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from zhtune import __version__
from zhtune.errors import ModelLoadError, ZhtuneError

log = logging.getLogger("zhtune")

MANIFEST = "zhtune.json"
CARD = "README.md"
# the files a model's numbers live in (what the sha256 manifest covers)
WEIGHT_PATTERNS = ("*.safetensors", "baseline.json", "*.onnx", "*.onnx.data")


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


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """A text file handle on a temp file with a unique name next to ``path``; on success it is
    fsynced and renamed over ``path``. Readers see the old or the new file, never a mix, and
    concurrent writers never clobber each other's temp file (the last rename wins, whole)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_writer(path) as fh:
        fh.write(text)


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically (unique temp file + rename), UTF-8, Chinese kept readable."""
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """One JSON object a line, streamed to a unique temp file, then renamed over ``path``."""
    n = 0
    with atomic_writer(path) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_manifest(out: str | Path, kind: str, labels: list[str], **extra: object) -> None:
    """``zhtune.json``. A ``weights`` entry in ``extra`` (e.g. copied from another directory's
    manifest) is dropped: digests are only ever computed here, by :func:`finish_model_dir`."""
    extra.pop("weights", None)
    write_json(
        Path(out) / MANIFEST,
        {"kind": kind, "labels": list(labels), "zhtune_version": __version__, **extra},
    )


# --- the sha256 manifest of the weight files ------------------------------------------------
def sha256_file(f: Path) -> str:
    with f.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def weight_digests(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of the weight files at the top of a model directory."""
    p = Path(path)
    files = sorted({f for pat in WEIGHT_PATTERNS for f in p.glob(pat) if f.is_file()})
    return {f.name: sha256_file(f) for f in files}


def verify_weights(path: str | Path, manifest: dict, skip: bool = False) -> None:
    """Check every weight file listed in ``manifest["weights"]`` against its sha256;
    :class:`ModelLoadError` naming the first file that is missing or changed. Directories
    without digests (hub models, older runs) pass as before."""
    digests = manifest.get("weights")
    if not isinstance(digests, dict) or not digests:
        return
    if skip:
        log.warning("%s: weights NOT verified against %s (--skip-verify)", path, MANIFEST)
        return
    for name, want in digests.items():
        f = Path(path) / name
        if not f.is_file():
            raise ModelLoadError(
                f"{f}: listed in {MANIFEST} but missing; copy the whole model directory again"
            )
        got = sha256_file(f)
        if got != want:
            raise ModelLoadError(
                f"{f}: sha256 {got[:12]}... does not match {MANIFEST} ({str(want)[:12]}...): the "
                "file changed after training (corrupt copy?); copy it again, or pass "
                "--skip-verify to load it anyway"
            )


def finish_model_dir(out: str | Path, metrics: dict | None = None) -> None:
    """The end of every training command (called by ``write_test_outputs``): add the sha256
    of the weight files to ``zhtune.json`` and write the model card ``README.md``."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        return
    manifest["weights"] = weight_digests(out)
    write_json(out / MANIFEST, manifest)
    write_model_card(out, manifest, metrics or {})


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


# --- the model card ---------------------------------------------------------------------------
LIBRARY = {"encoder": "transformers", "lora-head": "peft", "scoring": "peft", "onnx": "onnx"}
CARD_METRICS = (("accuracy", "accuracy", "Accuracy"), ("macro_f1", "f1", "Macro F1"))


def _hub_id(ref: object) -> str | None:
    """``ref`` when it reads as a hub id (``name`` or ``owner/name``, not a local path)."""
    import re

    ref = str(ref or "")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", ref) or Path(ref).exists() or ref in (".", ".."):
        return None
    return ref


def training_command() -> str | None:
    """The ``zhtune ...`` command line of this process, when it is the zhtune CLI."""
    import shlex
    import sys

    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog in ("zhtune", "__main__.py") or prog.startswith("zhtune"):
        return shlex.join(["zhtune", *sys.argv[1:]])
    return None


def write_model_card(out: str | Path, manifest: dict, metrics: dict) -> Path:
    """``README.md`` with Hugging Face YAML front matter (``language: zh``, ``pipeline_tag``,
    ``library_name``, ``base_model``, ``datasets``, ``metrics`` and a ``model-index`` with the
    measured test figures), so the directory can be pushed to a hub as is."""
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    out = Path(out)
    cfg: dict[str, Any] = {}
    if (out / "config.yaml").is_file():
        cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
    kind = str(manifest["kind"])
    library = LIBRARY.get(kind, "zhtune")
    if kind in ("lora-head", "scoring") and not (out / "adapter_config.json").is_file():
        library = "transformers"
    data = cfg.get("dataset") or Path(str(cfg.get("train") or cfg.get("data_dir") or "")).name
    base = _hub_id(manifest.get("base_model"))
    name = out.resolve().name
    results = [
        EvalResult(task_type="text-classification", dataset_type=str(data or "custom"),
                   dataset_name=str(data or "custom"), dataset_split=metrics.get("split", "test"),
                   metric_type=mtype, metric_name=label, metric_value=round(metrics[key], 4))
        for key, mtype, label in CARD_METRICS if isinstance(metrics.get(key), int | float)
    ]  # fmt: skip
    card_data = ModelCardData(
        language="zh",
        pipeline_tag="text-classification",
        library_name=library,
        base_model=base,
        datasets=[str(data)] if data else None,
        metrics=[m for _, m, _ in CARD_METRICS],
        tags=["zhtune", kind],
        model_name=name,
        eval_results=results or None,
    )
    command = training_command()
    rows = "\n".join(f"| {r.metric_name} ({r.dataset_split}) | {r.metric_value} |" for r in results)
    labels = ", ".join(f"`{x}`" for x in manifest.get("labels", []))
    body = f"""
# {name}

Chinese text classifier ({kind}) trained with [zhtune](https://pypi.org/project/zhtune/)
{manifest.get("zhtune_version", __version__)}. Labels: {labels}.
Base model: `{manifest.get("base_model") or "none (trained from the data alone)"}`.

| metric | value |
|---|---|
{rows or "| (no test split) | - |"}

Test examples: {metrics.get("n", "?")}. All figures: `metrics.json`; resolved config: `config.yaml`.

## Trained with

```bash
{command or "# called from Python; config.yaml holds the resolved config"}
```

## Use

```python
from zhtune import Classifier

clf = Classifier.load("{name}")
clf.predict("质量很好，物流也快")
```

The sha256 of every weight file is in `zhtune.json`; `Classifier.load` checks them.
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    write_text_atomic(out / CARD, str(card))
    return out / CARD
