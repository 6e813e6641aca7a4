"""Decoder LLMs for classification: loading (full precision or 4-bit NF4), LoRA, the
training wrappers and the inference backends of kinds ``lora-head`` and ``scoring``.

Two ways to classify with a causal LM:

- ``head``: ``AutoModelForSequenceClassification`` (``Qwen2ForSequenceClassification``: a
  linear ``score`` layer on the hidden state of the last non-padding token). With LoRA the
  ``score`` layer trains and is saved with the adapter (``modules_to_save``); with
  ``freeze_base`` only ``score`` trains and is saved as ``head.safetensors``.
- ``scoring``: the causal LM itself scores label words after a prompt
  (:mod:`zhtune.llm.scoring`).

A run directory stores the adapter (``adapter_model.safetensors``, ``adapter_config.json``),
the tokenizer and ``zhtune.json`` naming the base model; a merged model (``zhtune merge``)
or a zero-shot run stores the full model or only the reference.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhtune.device import compute_dtype, inference_dtype, local_device_map, trainable_dtype
from zhtune.errors import ConfigError, ModelLoadError
from zhtune.llm.scoring import IGNORE, LabelScorer, items_from_candidates
from zhtune.probs import softmax
from zhtune.text import tokenizer_for_model

log = logging.getLogger("zhtune")
# bitsandbytes logs a warning at import on CPUs with AVX512-BF16 when the optional `kernels`
# package (which downloads kernels from the Hugging Face hub) is missing; its fallback works
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# raised from inside peft (prepare_model_for_kbit_training / get_peft_model), not our call
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)

HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"


# --- loading -------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the load reports / progress bars of ``from_pretrained`` (expected new heads)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


MMAP_THRESHOLD = 128 * 1024


def limit_heap_fragmentation() -> bool:
    """On CPU with glibc: serve every allocation of >= 128 KiB with its own mmap.

    bitsandbytes dequantizes each 4-bit weight to a temporary fp32 matrix on every forward
    and backward pass on CPU. With glibc's default, *dynamic* mmap threshold (it rises to
    32 MiB after the first big free) these temporaries and the activations between them come
    from the heap, fragment it, and a QLoRA run's resident memory grows by up to ~1 GiB for a
    0.5B model (docs/llm.md). A fixed threshold returns big blocks to the system on free.
    Process-wide, so library code never calls it: the ``zhtune`` CLI does, for ``lora`` /
    ``zero-shot`` with ``--qlora`` (``zhtune.cli.main``); scripts may call it themselves."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or torch.cuda.is_available():
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


def load_llm_tokenizer(model: str, tokenizer: str | None = None) -> Any:
    """A decoder's tokenizer (``tokenizer`` if given, else the model's own, else the built-in
    vocabulary), padding with its end-of-text token when it has no pad token."""
    return tokenizer_for_model(model, tokenizer, pad=True)


def model_ref(model: str) -> str:
    """An absolute path for a local model directory (so a run dir works from anywhere), else
    the hub id as given. Fails fast on a local path that does not exist."""
    local = Path(model).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if local.exists():
        raise ModelLoadError(f"{model}: not a model directory")
    if local.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"{model}: no such model directory")
    from zhtune.classifier import _check_hub_id

    _check_hub_id(model)  # one line when neither cached nor reachable (offline mode too)
    return model


def quantization_config(compute_dtype: torch.dtype):
    """4-bit NF4 with double quantization (QLoRA); the heads stay in full precision."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError(
            "config field 'qlora': needs the bitsandbytes package (pip install bitsandbytes)"
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=["score", "lm_head"],
    )


def check_custom_code(model: str, trust_remote_code: bool = False) -> None:
    """A checkpoint whose ``config.json`` names its own Python classes (``auto_map``) needs
    ``--trust-remote-code``: a one-line error without it, a warning with it."""
    import json

    cfg_file = Path(model) / "config.json"
    try:
        auto_map = json.loads(cfg_file.read_text(encoding="utf-8")).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return
    if not auto_map:
        return
    if not trust_remote_code:
        raise ModelLoadError(
            f"{model}: a custom-code checkpoint (auto_map in config.json: "
            f"{', '.join(sorted(auto_map))}); its own Python code runs only with "
            "--trust-remote-code (read that code first)"
        )
    log.warning("%s: running the checkpoint's own Python code (--trust-remote-code)", model)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_base(
    model: str,
    mode: str,
    tokenizer: Any,
    labels: Sequence[str] | None = None,
    qlora: bool = False,
    *,
    device: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
) -> Any:
    """The base model: ``AutoModelForSequenceClassification`` (mode head, with ``labels``) or
    ``AutoModelForCausalLM`` (scoring). Safetensors only.

    ``dtype``: the weights' dtype (default fp32, :func:`zhtune.device.trainable_dtype`; never
    the checkpoint's own, which transformers 5 would keep); ``device``: where to put them
    (default: left on CPU for the Trainer to move). ``qlora``: 4-bit NF4 on this process's
    GPU (``LOCAL_RANK``; ``device`` if given) or on CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from zhtune.runs import check_safetensors

    local = Path(model)
    check_safetensors(local)
    if local.is_dir():
        check_custom_code(model, trust_remote_code)
    extra: dict[str, Any] = {}
    if mode == "head":
        if not labels:
            raise ValueError("mode head needs the label names")
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "pad_token_id": tokenizer.pad_token_id,
        }
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        config = AutoConfig.from_pretrained(model, **extra, **remote)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"{model}: a custom-code checkpoint; its own Python code runs only with "
                "--trust-remote-code (read that code first)"
            ) from None
        raise ModelLoadError(
            f"cannot load a model config from {model!r}: {_first_line(e)}"
        ) from None
    if mode == "head" and getattr(config, "pad_token_id", None) is None:
        raise ModelLoadError(
            f"{model}: the config has no pad_token_id and the tokenizer no pad or eos token; "
            "the classification head cannot find the last token of a padded row"
        )
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} entries but the model's vocabulary only {vocab}; "
            "use the tokenizer the model was trained with (--tokenizer)"
        )
    kw: dict[str, Any] = {"config": config, "use_safetensors": True, **remote}
    kw["dtype"] = dtype if dtype is not None else trainable_dtype()
    if qlora:
        check_qlora_device(device)
        kw["quantization_config"] = quantization_config(compute_dtype(device))
        kw["device_map"] = local_device_map(device)
        kw["dtype"] = torch.float32  # the non-quantized parts (norms, score/lm_head)
    auto = AutoModelForSequenceClassification if mode == "head" else AutoModelForCausalLM
    try:
        with quiet_transformers():
            loaded = auto.from_pretrained(model, **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load {model!r} as a {auto.__name__}: {_first_line(e)}"
        ) from None
    if device is not None and not qlora:
        loaded = loaded.to(device)
    return loaded


def check_qlora_device(device: Any) -> None:
    """``--qlora`` on CUDA needs a bitsandbytes build with GPU support: one line otherwise."""
    if device is not None and getattr(device, "type", None) != "cuda":
        return
    if not torch.cuda.is_available():
        return  # bitsandbytes' CPU backend
    try:
        import bitsandbytes.functional  # noqa: F401  (loads the native library)
    except Exception as e:  # a CPU-only build, a missing CUDA library
        raise ConfigError(
            f"config field 'qlora': bitsandbytes has no GPU support here ({_first_line(e)})"
        ) from None


def linear_module_names(model: Any) -> list[str]:
    """Short names of the linear layers (candidates for ``target_modules``)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__.startswith("Linear")
    }
    return sorted(names - {"score", "lm_head"})


def add_lora(
    model: Any,
    mode: str,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    qlora: bool = False,
    gradient_checkpointing: bool = False,
) -> Any:
    """Wrap ``model`` in a peft LoRA model (task SEQ_CLS trains and saves ``score`` too)."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    ckpt_kw = {"use_reentrant": False}
    if qlora:  # fp32 norms/head, input grads, optional checkpointing
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kw,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kw)
    found = linear_module_names(model)
    missing = [t for t in target_modules if t not in found]
    if missing:
        raise ConfigError(
            f"config field 'target_modules': {', '.join(missing)} not in the model; "
            f"its linear layers: {', '.join(found)}"
        )
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type=TaskType.SEQ_CLS if mode == "head" else TaskType.CAUSAL_LM,
        modules_to_save=["score"] if mode == "head" else None,
    )
    peft_model = get_peft_model(model, lora)
    for p in peft_model.parameters():  # adapters and the score copy train in fp32
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return peft_model


def freeze_all_but_head(model: Any, gradient_checkpointing: bool = False) -> Any:
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("score.")
    model.score.float()
    return model


# --- training wrappers ---------------------------------------------------------------------
class TrainableState(torch.nn.Module):
    """A wrapper whose state dict is its *trainable* parameters only.

    The Trainer saves ``state_dict()`` of a model that is not a ``PreTrainedModel`` as the
    checkpoint's ``model.safetensors`` and loads it back (best model, resume) with
    ``load_state_dict(sd, strict=False)``: so checkpoints hold the adapter/head, not the
    frozen base."""

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def state_dict(  # type: ignore[override]
        self, *args: Any, prefix: str = "", **kwargs: Any
    ) -> dict[str, Any]:
        # read the trainable parameters directly: the full state dict would serialise (and,
        # for bitsandbytes 4-bit layers on CPU, repack) every frozen base weight
        return {
            prefix + n: p.detach().contiguous()
            for n, p in self.named_parameters()
            if p.requires_grad
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        from torch.nn.modules.module import _IncompatibleKeys

        names = set(self.trainable_names())
        unexpected = [k for k in state_dict if k not in names]
        missing = [k for k in names if k not in state_dict]
        if strict and (unexpected or missing):
            raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        keep = {k: v for k, v in state_dict.items() if k in names}
        super().load_state_dict(keep, strict=False, assign=assign)
        return _IncompatibleKeys(missing, unexpected)


class HeadOnlyModel(TrainableState):
    """A sequence-classification model whose base is frozen (``--freeze-base``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False
        )


class ScoringModel(TrainableState):
    """Training/evaluation view of label scoring for the Trainer.

    Batches come from :class:`zhtune.llm.scoring.ScoringCollator` (B*W candidate rows and B
    class ids). ``loss="classes"`` (default; prompt-based fine-tuning as in PET / LM-BFF):
    every candidate row is forwarded and the loss is the cross-entropy of the class scores
    (the softmax over the label words that predict uses). ``loss="lm"``: only the gold
    class's rows are forwarded, loss ``-log sum_{w in gold} P(w | prompt)`` (the language-
    model loss of the answer). Both averaged over the B texts (times the class weight, if
    any). Evaluation scores all rows, each prompt once
    (:meth:`~zhtune.llm.scoring.LabelScorer.cached_word_logprobs`), and returns the class
    scores as ``logits`` (B, C) and the same loss."""

    def __init__(
        self,
        lm: Any,
        scorer: LabelScorer,
        class_weight: torch.Tensor | None = None,
        loss: str = "classes",
    ):
        super().__init__()
        self.lm = lm
        self.scorer = scorer
        self.class_weight = class_weight
        self.loss = loss

    def _loss(self, gold_sums: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        nll = -gold_sums.logsumexp(-1)  # (B,)
        if self.class_weight is not None:
            nll = nll * self.class_weight.to(nll.device)[labels]
        return nll.mean()

    def forward(self, input_ids, attention_mask=None, position_ids=None, word_targets=None,
                labels=None):  # fmt: skip
        from transformers.modeling_outputs import SequenceClassifierOutput

        W = self.scorer.n_words
        B = input_ids.shape[0] // W
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "word_targets": word_targets,
        }
        cls = self.scorer.word_class.to(input_ids.device)
        gold = None if labels is None else cls[None, :] == labels[:, None]  # (B, W)
        if self.training and self.loss == "classes":
            if labels is None:
                raise ValueError("training needs labels")
            sums, counts = self.scorer.word_logprobs(self.lm, batch)  # (B*W,), text-major
            words = self.scorer.normalise(sums, counts).view(B, W)
            logits = self.scorer.class_scores(words)  # (B, C)
            weight = None if self.class_weight is None else self.class_weight.to(logits.device)
            ce = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight)
            return SequenceClassifierOutput(loss=ce, logits=logits)
        if self.training:
            if gold is None:
                raise ValueError("training needs labels")
            rows = gold.flatten().nonzero().squeeze(1)  # the gold words' rows
            sums, _ = self.scorer.word_logprobs(self.lm, {k: v[rows] for k, v in batch.items()})
            full = torch.full((B * W,), float("-inf"), dtype=sums.dtype, device=sums.device)
            full = full.index_put((rows,), sums)  # (B*W,), -inf off the gold words
            return SequenceClassifierOutput(loss=self._loss(full.view(B, W), labels))
        # evaluation: every row, each prompt computed once (its KV cache reused W times)
        sums, counts = self.scorer.cached_word_logprobs(self.lm, items_from_candidates(batch, W))
        logits = self.scorer.class_scores(self.scorer.normalise(sums, counts))  # (B, C)
        loss = None
        if gold is not None:
            loss = self._loss(sums.masked_fill(~gold, float("-inf")), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# --- inference backends --------------------------------------------------------------------
def check_adapter(path: Path) -> bool:
    """True when ``path`` holds a safetensors LoRA adapter; refuses pickled adapters."""
    if (path / ADAPTER_FILE).is_file():
        return True
    if (path / "adapter_model.bin").is_file():
        raise ModelLoadError(f"{path}: the adapter is a pickle file; zhtune loads safetensors only")
    return False


def base_of(path: Path, manifest: dict, base_model: str | None = None) -> str:
    """The base model a run directory was trained from (``base_model`` overrides)."""
    if manifest.get("standalone"):
        return str(path)
    ref = base_model or manifest.get("base_model")
    if not ref:
        raise ModelLoadError(f"{path}/zhtune.json names no base_model")
    if not Path(ref).is_dir() and (Path(ref).is_absolute() or str(ref).startswith(".")):
        raise ModelLoadError(
            f"{path}: the base model {ref} is missing; pass base_model=... to Classifier.load"
        )
    return str(ref)


def load_tuned(path: Path | str, manifest: dict, base_model: str | None = None,
               for_training: bool = False, device: Any = None,
               trust_remote_code: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(model, tokenizer) of a ``lora-head`` or ``scoring`` directory: base + adapter/head.

    Full-precision adapters are merged for inference (faster, same outputs up to ~1e-6);
    QLoRA adapters run on the 4-bit base as trained. ``device`` (a ``torch.device``; None =
    CPU): inference weights in :func:`zhtune.device.inference_dtype` there (bf16 on CUDA)."""
    from peft import PeftModel

    path = Path(path)
    mode = "head" if manifest["kind"] == "lora-head" else "scoring"
    base = base_of(path, manifest, base_model)
    tok = load_llm_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else base)
    qlora = bool(manifest.get("qlora")) and not manifest.get("standalone")
    dev = device if device is not None else torch.device("cpu")
    dtype = None if for_training else inference_dtype(dev)
    model = load_base(base, mode, tok, manifest.get("labels"), qlora=qlora,
                      device=dev if qlora else None, dtype=dtype,
                      trust_remote_code=trust_remote_code)  # fmt: skip
    if manifest.get("freeze_base") and not manifest.get("standalone"):
        from safetensors.torch import load_file

        state = load_file(str(path / HEAD_FILE))
        model.score.load_state_dict({k.removeprefix("score."): v for k, v in state.items()})
    elif not manifest.get("standalone") and check_adapter(path):
        with quiet_transformers():
            model = PeftModel.from_pretrained(model, str(path), is_trainable=for_training)
        if not qlora and not for_training:
            model = model.merge_and_unload()
    if not qlora and not for_training:
        model = model.to(dev)
    return model.eval(), tok


class HeadBackend:
    """LoRA (or frozen-base) sequence-classification LLM: softmax over the head's logits."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], max_length: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.labels, self.max_length = labels, max_length
        self.multi_label = False  # zhtune.json ``multi_label``: a sigmoid per label
        # long documents (zhtune.json ``long_text``): truncate | head-tail | chunks
        self.long_text, self.stride, self.pool = "truncate", 0, "mean"

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = self.predict_logits(texts, batch_size)
        return 1 / (1 + np.exp(-out.astype(np.float64))) if self.multi_label else softmax(out)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        from zhtune.serving.encoder import encode_batches

        if self.long_text != "truncate":  # token windows, pooled (zhtune/finetune/longtext.py)
            from zhtune.finetune.longtext import predict_logits

            return predict_logits(self, texts, batch_size)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for idx, feed in encode_batches(
                self.tokenizer, texts, batch_size, self.max_length, ("input_ids", "attention_mask")
            ):
                inputs = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
                out[idx] = self.model(**inputs).logits.float().cpu().numpy()  # (B, C)
        return out


class ScoringBackend:
    """Label scoring with a causal LM: softmax over the class scores, less ``class_bias``
    (zero-shot calibration, :mod:`zhtune.llm.calibrate`; none = zeros)."""

    def __init__(
        self, model: Any, scorer: LabelScorer, class_bias: Sequence[float] | None = None
    ) -> None:
        self.model, self.scorer = model, scorer
        self.labels = scorer.labels
        self.class_bias = (
            np.zeros(len(self.labels))
            if class_bias is None
            else np.asarray(class_bias, dtype=np.float64)
        )

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class scores (N, C): the logits of label scoring."""
        # a batch is batch_size texts x W label words; keep the rows per forward bounded
        per = max(1, batch_size // max(1, self.scorer.n_words))
        return self.scorer.predict_scores(self.model, texts, per) - self.class_bias

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return softmax(self.predict_logits(texts, batch_size))


def scorer_from_manifest(tokenizer: Any, manifest: dict) -> LabelScorer:
    return LabelScorer(
        tokenizer,
        manifest["template"],
        {k: list(v) for k, v in manifest["label_words"].items()},
        manifest.get("score_norm", "sum"),
        manifest.get("word_agg", "logsumexp"),
        int(manifest.get("max_length", 128)),
        chat_template=bool(manifest.get("chat_template", False)),
    )


def load_backend(path: Path | str, manifest: dict, **kw: Any) -> HeadBackend | ScoringBackend:
    """Classifier backend for kinds ``lora-head`` and ``scoring`` (``base_model=`` overrides
    the base named in zhtune.json; ``max_length=`` the truncation)."""
    from zhtune.device import resolve_device, set_threads

    set_threads()
    if kw.get("int8"):
        log.warning(
            "int8 applies to encoder models; %s loads as trained (use --qlora for 4-bit)", path
        )
    device = resolve_device(kw.get("device") or "auto")
    model, tok = load_tuned(path, manifest, kw.get("base_model"), device=device,
                            trust_remote_code=bool(kw.get("trust_remote_code")))  # fmt: skip
    if kw.get("max_length"):
        manifest = {**manifest, "max_length": int(kw["max_length"])}
    if manifest["kind"] == "lora-head":
        head = HeadBackend(
            model, tok, list(manifest["labels"]), int(manifest.get("max_length", 128))
        )
        from zhtune.finetune.longtext import from_manifest

        head.multi_label = bool(manifest.get("multi_label"))
        return from_manifest(head, manifest)
    return ScoringBackend(model, scorer_from_manifest(tok, manifest), manifest.get("class_bias"))


__all__ = [
    "IGNORE",
    "HeadBackend",
    "HeadOnlyModel",
    "ScoringBackend",
    "ScoringModel",
    "TrainableState",
    "add_lora",
    "load_backend",
    "load_base",
    "load_llm_tokenizer",
    "load_tuned",
]
