"""Batched inference for Hugging Face sequence-classification models (PyTorch and ONNX).

Both backends share :func:`encode_batches`: the texts are tokenized once (the fast tokenizer
batches in Rust), sorted by token length and padded per batch with an attention mask, so a
batch costs what its longest text costs and a text gets the same probabilities whatever it
is batched with (up to float rounding, ~1e-7). Rows come back in input order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from zhtune.device import cpu_threads, set_threads  # noqa: F401  (re-exported)
from zhtune.errors import ModelLoadError
from zhtune.probs import softmax
from zhtune.runs import check_safetensors, check_safetensors_file  # noqa: F401  (re-exported)

log = logging.getLogger("zhtune")

# Texts tokenized and length-sorted together; bounds memory for very long input lists.
SORT_WINDOW = 4096


def encode_batches(
    tokenizer,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    input_names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(row indices, inputs)`` per batch; inputs are int64 arrays of shape (B, T).

    Texts are tokenized without padding, sorted by token count (stable) and each batch is
    right-padded to its own longest row. ``token_type_ids`` are zeros (single sentences).
    User text is tokenized with ``split_special_tokens=True``: a text containing ``[SEP]`` or
    ``<|endoftext|>`` gets the tokens of those characters, not the special token itself (which
    would move the token a classification head reads, or end the text early).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = max(1, int(batch_size))
    for w0 in range(0, len(texts), SORT_WINDOW):
        window = list(texts[w0 : w0 + SORT_WINDOW])
        ids = tokenizer(
            window,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            split_special_tokens=True,
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for b0 in range(0, len(order), batch_size):
            idx = order[b0 : b0 + batch_size]
            width = int(lengths[idx].max())
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)  # (B, T)
            mask = np.zeros((len(idx), width), dtype=np.int64)  # (B, T), 1 = real token
            for r, i in enumerate(idx):
                n = int(lengths[i])
                input_ids[r, :n] = ids[i]
                mask[r, :n] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in input_names:
                feed["token_type_ids"] = np.zeros_like(input_ids)
            yield idx + w0, {k: v for k, v in feed.items() if k in input_names}


def model_input_names(model, tokenizer) -> list[str]:
    """The inputs both the tokenizer produces and the model's forward accepts, in the order
    of the forward signature."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = list(getattr(tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
    for required in ("input_ids", "attention_mask"):
        if required not in names:
            names.append(required)
    # forward-signature order: the ONNX exporter names the flattened inputs in this order
    return [n for n in params if n in names]


def quantize_int8(model):
    """PyTorch dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations
    quantized per batch at run time). CPU only; the embeddings stay fp32."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        from torch.ao.quantization import quantize_dynamic

        engines = torch.backends.quantized.supported_engines
        for engine in ("x86", "fbgemm", "qnnpack"):
            if engine in engines:
                torch.backends.quantized.engine = engine
                break
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class EncoderBackend:
    """AutoModelForSequenceClassification + tokenizer, length-sorted batches, inference mode."""

    def __init__(
        self, model, tokenizer, max_length: int = 128, int8: bool = False, device=None
    ) -> None:
        import torch

        self.device = torch.device("cpu") if device is None else device
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.int8 = int8
        # long documents (zhtune.json ``long_text``): truncate | head-tail | chunks
        self.long_text, self.stride, self.pool = "truncate", 0, "mean"
        self.multi_label = (
            getattr(model.config, "problem_type", None) == "multi_label_classification"
        )
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.input_names = model_input_names(model, tokenizer)

    @classmethod
    def load(
        cls,
        path: Path | str,
        allow_pickle: bool = False,
        max_length: int | None = None,
        int8: bool = False,
        device: object = "auto",
        **_: object,
    ) -> EncoderBackend:
        """``device``: ``auto|cpu|cuda|cuda:N`` or a ``torch.device`` (:mod:`zhtune.device`);
        on CUDA the weights are bf16 (else fp16), on CPU fp32. ``int8`` is CPU-only (``auto``
        then means CPU). ``allow_pickle`` also reads ``.bin`` weights, preferring safetensors
        where both exist."""
        from transformers import AutoModelForSequenceClassification

        from zhtune.device import inference_dtype, require_cpu
        from zhtune.text import load_tokenizer

        dev = _device(device, int8)
        if int8:
            require_cpu(dev, "--int8 (PyTorch dynamic quantization)")
        set_threads()
        local = Path(path)
        check_safetensors(local, allow_pickle)
        from transformers.utils import logging as hf_logging

        if local.is_dir() and not (local / "config.json").is_file():
            raise ModelLoadError(f"{path}: no config.json (not a Hugging Face model directory)")
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a small model
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # missing weights are reported below, in one line
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path),
                use_safetensors=None if allow_pickle else True,
                output_loading_info=True,
                dtype=inference_dtype(dev),
            )
            tokenizer = load_tokenizer(str(path))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"cannot load {path}: {e}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        missing = sorted(
            map(str, [*(info.get("missing_keys") or ()), *(info.get("mismatched_keys") or ())])
        )
        if missing:  # transformers would fill them with random values and predict noise
            raise ModelLoadError(
                f"{path}: weights missing from the checkpoint ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): not a trained classifier, or a "
                "corrupt file (fine-tune it first with `zhtune finetune`)"
            )
        vocab = getattr(model.config, "vocab_size", None)
        if vocab is not None and len(tokenizer) > vocab:
            raise ModelLoadError(
                f"{path}: the tokenizer has {len(tokenizer)} entries but the model's vocabulary "
                f"only {vocab}; use the tokenizer the model was trained with"
            )
        max_len = max_length or int(getattr(model.config, "zhtune_max_length", 0) or 128)
        model.eval()
        model = quantize_int8(model) if int8 else model.to(dev)
        return cls(model, tokenizer, max_len, int8=int8, device=dev)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch

        if self.long_text != "truncate":
            from zhtune.finetune.longtext import predict_logits

            return predict_logits(self, texts, batch_size)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for idx, feed in encode_batches(
                self.tokenizer, texts, batch_size, self.max_length, self.input_names
            ):
                inputs = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
                out[idx] = self.model(**inputs).logits.float().cpu().numpy()  # (B, n_labels)
        return out

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        logits = self.predict_logits(texts, batch_size)
        if self.multi_label:  # independent probabilities, one sigmoid per label
            return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        return softmax(logits)


def _device(spec: object, int8: bool = False):
    """A ``torch.device`` from a spec or a device; ``auto`` with ``int8`` is the CPU."""
    import torch

    from zhtune.device import resolve_device

    if isinstance(spec, torch.device):
        return spec
    if int8 and str(spec or "auto").lower() == "auto":
        return torch.device("cpu")
    return resolve_device(str(spec) if spec is not None else "auto")


def load_backend(path: Path | str, manifest: dict, **kw: object) -> EncoderBackend:
    if kw.get("max_length") is None and manifest.get("max_length"):
        kw["max_length"] = int(manifest["max_length"])
    from zhtune.finetune.longtext import from_manifest

    backend = from_manifest(EncoderBackend.load(path, **kw), manifest)  # type: ignore[arg-type]
    labels = manifest.get("labels")
    if labels and [str(x) for x in labels] != backend.labels:
        raise ModelLoadError(
            f"{path}: zhtune.json lists {len(labels)} labels ({', '.join(map(str, labels))}) but "
            f"the model's config.json has {len(backend.labels)} ({', '.join(backend.labels)}); "
            "the label map does not belong to these weights"
        )
    return backend
