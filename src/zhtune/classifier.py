"""``Classifier``: one loading and prediction API for every model kind.

``Classifier.load(path)`` reads ``zhtune.json`` in a run/model directory to learn the model
kind (no flag needed); a plain Hugging Face sequence-classification directory or hub id
loads as kind ``encoder``. Every kind provides ``predict_proba(texts, batch_size)``;
``evaluate``, ``predict`` and ``serve`` only ever go through this class.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zhtune.errors import ModelLoadError, ZhtuneError
from zhtune.probs import apply_temperature, log_probs, temperature_softmax
from zhtune.runs import read_manifest, verify_weights


class Backend(Protocol):
    labels: list[str]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


# kind -> module that defines ``load_backend(path, manifest, **kw) -> Backend``.
# Imported only when a model of that kind is loaded (torch is not needed for the baseline).
KIND_MODULES: dict[str, str] = {
    "baseline": "zhtune.baseline",
    "encoder": "zhtune.serving.encoder",
    "lora-head": "zhtune.llm.lora",
    "scoring": "zhtune.llm.lora",
    "onnx": "zhtune.serving.export",
    "ensemble": "zhtune.finetune.ensemble",
}


def load_backend(kind: str, path: Path | str, manifest: dict, **kw: Any) -> Backend:
    if kind not in KIND_MODULES:
        raise ModelLoadError(
            f"{path}: unknown model kind {kind!r}; known: {', '.join(KIND_MODULES)}"
        )
    module = importlib.import_module(KIND_MODULES[kind])
    return module.load_backend(path, manifest, **kw)


def _check_hub_id(model_id: str) -> None:
    """Fail fast, with a clear message, when a hub id is neither cached nor reachable."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return  # in the local cache
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"{model_id}: not a local directory and not in the Hugging Face cache (offline mode)"
            )
        model_info(model_id, timeout=10)
    except HFValidationError:
        raise ModelLoadError(
            f"{model_id}: no such directory, and not a valid Hugging Face model id"
        ) from None
    except ModelLoadError:
        raise
    except Exception as e:  # network errors, 404, gated repos
        raise ModelLoadError(
            f"{model_id}: no such local directory, and the Hugging Face hub cannot provide it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


class Classifier:
    """Load any zhtune model and predict label names with probabilities.

    >>> clf = Classifier.load("runs/quickstart/finetune")   # doctest: +SKIP
    >>> clf.predict("质量很好，物流也快")                       # doctest: +SKIP
    {'label': 'positive', 'confidence': 0.97, 'probs': {'negative': 0.03, 'positive': 0.97}}
    """

    def __init__(
        self,
        backend: Backend,
        kind: str,
        path: str,
        temperature: float = 1.0,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.path = path
        self.temperature = temperature
        # multi-label models: label -> decision threshold (zhtune.json ``thresholds``)
        self.thresholds = thresholds

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    @property
    def labels(self) -> list[str]:
        return list(self.backend.labels)

    @classmethod
    def load(
        cls, path: str | Path, *, calibrated: bool = False, skip_verify: bool = False, **kw: Any
    ) -> Classifier:
        """Load a run directory, a model directory or a Hugging Face hub id.

        ``calibrated=True`` applies the temperature fitted by ``zhtune evaluate``
        (``calibration.json``). The weight files are checked against the sha256 digests in
        ``zhtune.json`` (when it has them) unless ``skip_verify``. Extra keyword arguments go
        to the kind's loader (e.g. ``allow_pickle``). ``device``: ``auto`` (default: the first
        GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N`` (:mod:`zhtune.device`); the
        TF-IDF baseline and ONNX models run on CPU."""
        device = kw.get("device")
        if device is not None and str(device).lower() not in ("auto", "cpu"):
            from zhtune.device import resolve_device

            resolve_device(str(device))  # one-line error for cuda without CUDA, bad specs
        p = Path(path)
        manifest = read_manifest(p) if p.is_dir() else None
        if manifest is None:
            if p.is_dir() and not (p / "config.json").is_file():
                raise ModelLoadError(
                    f"{p}: not a zhtune run or model directory (no zhtune.json and no config.json)"
                )
            if not p.is_dir() and (p.exists() or str(path).startswith((".", "/"))):
                raise ModelLoadError(f"{path}: no such model directory")
            if not p.is_dir():  # a local Hugging Face directory needs no hub
                _check_hub_id(str(path))
            manifest = {"kind": "encoder"}
        if p.is_dir():
            verify_weights(p, manifest, skip=skip_verify)
        kind = manifest["kind"]
        backend = load_backend(kind, p if p.exists() else str(path), manifest, **kw)
        temperature = 1.0
        thresholds = manifest.get("thresholds") if manifest.get("multi_label") else None
        if thresholds is not None:
            thresholds = {name: float(thresholds.get(name, 0.5)) for name in backend.labels}
            if calibrated:
                raise ZhtuneError(f"{p}: temperature calibration is for single-label models")
        if calibrated:
            cal = p / "calibration.json"
            if not cal.is_file():
                raise ZhtuneError(
                    f"{cal} not found: run `zhtune evaluate --model {p}` to fit a temperature"
                )
            temperature = float(json.loads(cal.read_text(encoding="utf-8"))["temperature"])
        return cls(backend, kind, str(path), temperature, thresholds)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits / class scores (len(texts), n_labels) before temperature: the backend's own
        (encoder, LoRA head, label scoring, ONNX), else log(probabilities)."""
        if isinstance(texts, str):
            raise TypeError("predict_logits takes a list of texts")
        if not len(texts):
            return np.zeros((0, len(self.labels)))
        own = getattr(self.backend, "predict_logits", None)
        if own is not None:
            return np.asarray(own(list(texts), batch_size=batch_size), dtype=np.float64)
        return log_probs(self.backend.predict_proba(list(texts), batch_size=batch_size))

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Probabilities, shape (len(texts), n_labels), in input order. With a temperature,
        softmax(logits / T) on the backend's logits where it has them."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts")
        if not len(texts):
            return np.zeros((0, len(self.labels)))
        if self.temperature != 1.0 and hasattr(self.backend, "predict_logits"):
            return temperature_softmax(self.predict_logits(texts, batch_size), self.temperature)
        probs = np.asarray(
            self.backend.predict_proba(list(texts), batch_size=batch_size), dtype=np.float64
        )
        return apply_temperature(probs, self.temperature)

    def format(self, probs: np.ndarray) -> list[dict]:
        labels = self.labels
        if self.thresholds is not None:  # independent probabilities, a label set per text
            cut = [self.thresholds[n] for n in labels]
            return [
                {
                    "labels": [n for n, p, t in zip(labels, row, cut, strict=True) if p >= t],
                    "probs": {name: float(p) for name, p in zip(labels, row, strict=True)},
                }
                for row in probs
            ]
        out = []
        for row in probs:
            i = int(row.argmax())
            out.append(
                {
                    "label": labels[i],
                    "confidence": float(row[i]),
                    "probs": {name: float(p) for name, p in zip(labels, row, strict=True)},
                }
            )
        return out

    def predict(self, texts: str | Sequence[str], batch_size: int = 32) -> dict | list[dict]:
        """``predict("文本")`` gives ``{"label", "confidence", "probs"}`` (multi-label models:
        ``{"labels": [...], "probs": {label: p}}``, independent probabilities); a list gives a
        list."""
        if isinstance(texts, str):
            return self.format(self.predict_proba([texts], batch_size))[0]
        return self.format(self.predict_proba(list(texts), batch_size))

    def throughput(self, texts: Sequence[str], batch_size: int = 32) -> float:
        """Texts per second over ``texts`` (one warm-up batch first)."""
        self.predict_proba(list(texts[:batch_size]), batch_size)
        t = time.perf_counter()
        self.predict_proba(list(texts), batch_size)
        return len(texts) / max(time.perf_counter() - t, 1e-9)


def add_load_args(p: Any) -> None:
    """``--allow-pickle`` and ``--skip-verify``: the :meth:`Classifier.load` options that every
    command loading a model (predict, evaluate, serve) offers."""
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow a model whose weights are only .bin (pickle) files, if you trust them",
    )
    p.add_argument(
        "--skip-verify",
        action="store_true",
        help="do not check the weight files against the sha256 digests in zhtune.json "
        "(very large models; a warning is logged)",
    )
