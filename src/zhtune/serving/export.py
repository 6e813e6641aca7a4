"""``zhtune export``: an encoder classifier to ONNX (optionally dynamic int8), parity-checked.

The exported directory is a model directory of kind ``onnx``: ``model.onnx`` (fp32),
``model.int8.onnx`` with ``--int8``, the tokenizer files, ``config.json``, ``zhtune.json``
and ``export.json`` (the parity and accuracy checks). :func:`load_backend` runs it with
onnxruntime, so ``Classifier.load(dir)`` works on it like on any other run directory.

Before it reports success the export checks itself: fp32 ONNX probabilities within
``--tolerance`` (1e-4) of PyTorch on sample texts, and with ``--int8`` the dev-split accuracy
of the int8 model within ``--max-accuracy-drop`` (0.5) points of fp32. A failed check leaves
no ``zhtune.json``, so a broken export cannot be loaded by mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zhtune.device import cpu_threads
from zhtune.errors import ModelLoadError, ZhtuneError
from zhtune.probs import softmax
from zhtune.runs import prepare_out_dir, read_manifest, write_json, write_manifest
from zhtune.serving.encoder import encode_batches

if TYPE_CHECKING:
    from zhtune.classifier import Classifier
    from zhtune.data import DataConfig, Splits
    from zhtune.serving.encoder import EncoderBackend

log = logging.getLogger("zhtune")

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Parity texts used when no labelled data is given (mixed lengths, so batches are padded).
SAMPLE_TEXTS = [
    "质量很好，物流也快，非常满意",
    "太差了",
    "这家餐厅的菜味道一般，服务员态度还可以，但是上菜速度实在太慢了，等了四十多分钟。",
    "今天股市大涨，科技板块领涨",
    "还行吧",
    "屏幕清晰，运行流畅，电池也很耐用，推荐购买！",
    "快递丢件，客服也不理人，再也不买了",
    "书的内容很有启发性",
    "The screen is great 但是电池不行",
    "一般",
]


# --- the backend (kind "onnx") -------------------------------------------------------------
class OnnxBackend:
    """An onnxruntime session + tokenizer; same length-sorted batching as ``EncoderBackend``."""

    def __init__(self, session: Any, tokenizer: Any, labels: list[str], max_length: int) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = max_length
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def from_file(
        cls, onnx_path: Path, tokenizer: Any, labels: list[str], max_length: int
    ) -> OnnxBackend:
        """A CPU onnxruntime session on ``onnx_path``; ModelLoadError when it cannot load."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{onnx_path}: cannot load ({type(e).__name__}: {e})") from None
        return cls(session, tokenizer, labels, max_length)

    def predict_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits ``(len(texts), n_labels)``, in the order of ``texts``."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for idx, feed in encode_batches(
            self.tokenizer, texts, batch_size, self.max_length, self.input_names
        ):
            out[idx] = self.session.run(["logits"], feed)[0]  # (B, n_labels)
        return out

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``(len(texts), n_labels)``."""
        return softmax(self.predict_logits(texts, batch_size))


def load_backend(
    path: Path | str,
    manifest: dict,
    int8: bool | None = None,
    device: object = "auto",
    **_: object,
) -> OnnxBackend:
    """``int8=None`` runs the file the export chose; ``True``/``False`` pick one explicitly.
    ONNX models run on CPU (onnxruntime's CPU provider): ``device`` cuda is a one-line error."""
    from zhtune.text import load_tokenizer

    if str(device or "auto").lower() not in ("auto", "cpu"):
        from zhtune.device import require_cpu

        require_cpu(str(device), "an ONNX model (onnxruntime CPU provider)")

    path = Path(path)
    if int8 is None:
        name = manifest.get("onnx_file", FP32_FILE)
    else:
        name = INT8_FILE if int8 else FP32_FILE
    f = path / name
    if not f.is_file():
        hint = " (export with --int8 to get one)" if name == INT8_FILE else ""
        raise ModelLoadError(f"{f} not found{hint}")
    labels = manifest.get("labels")
    if not labels:
        raise ModelLoadError(f"{path / 'zhtune.json'}: no label names")
    return OnnxBackend.from_file(
        f, load_tokenizer(str(path)), labels, int(manifest.get("max_length") or 128)
    )


# --- export ----------------------------------------------------------------------------------
def export_onnx(backend: EncoderBackend, out_file: Path, opset: int = 17) -> None:
    """Trace the PyTorch model (eager attention, dynamic batch and sequence axes) to ONNX."""
    import torch

    model = backend.model
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        # eager attention traces to plain MatMul/Softmax ops, which onnxruntime fuses
        model.set_attn_implementation("eager")
    names = backend.input_names
    # two texts of different lengths, so the example batch is padded
    _, feed = next(encode_batches(backend.tokenizer, ["样例文本一二三", "短"], 2, 32, names))
    args = {k: torch.from_numpy(feed[k]) for k in names}  # forward-signature order
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(out_file),
            kwargs=args,
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def optimize_bert(path: Path, model_config: Any) -> bool:
    """Fuse attention / LayerNorm / GELU with onnxruntime's transformer optimizer (in place).

    Returns False (and leaves the file as it was) when the model type is not supported."""
    model_type = getattr(model_config, "model_type", "")
    if model_type not in ("bert", "roberta", "xlm-roberta", "electra", "ernie"):
        return False
    try:
        from onnxruntime.transformers import optimizer

        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("onnxruntime", "fusion", "onnx_model")):
                logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(
                str(path),
                model_type="bert",
                num_heads=int(model_config.num_attention_heads),
                hidden_size=int(model_config.hidden_size),
                opt_level=1,
            )
        opt.save_model_to_file(str(path))
        return True
    except Exception as e:  # the optimizer is best effort; the parity check follows
        log.warning("onnxruntime transformer optimizer skipped: %s", e)
        return False


def quantize_onnx_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantizer logs a line per tensor at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        quiet.setLevel(level)


def accuracy(probs: np.ndarray, gold: Sequence[int]) -> float:
    """Percent of rows whose most probable class is the gold one."""
    return float(np.mean(probs.argmax(axis=1) == np.asarray(gold)) * 100.0)


@dataclasses.dataclass
class ExportOptions:
    """How :func:`run_export` exports and checks (the ``zhtune export`` flags)."""

    int8: bool = False  # also quantize to dynamic int8, and use that file
    data: DataConfig | None = None  # labelled data for the parity texts and dev accuracy
    opset: int = 17
    optimize: bool = True  # onnxruntime's transformer graph fusions
    max_length: int | None = None  # max tokens per text (None: the model's)
    tolerance: float = 1e-4  # max |Δprobability| fp32 ONNX vs PyTorch
    max_accuracy_drop: float = 0.5  # max dev accuracy drop of int8 vs fp32, in points
    batch_size: int = 32  # texts per batch for the accuracy checks


def run_export(
    model: str, out: str | Path, options: ExportOptions | None = None, **kwargs: Any
) -> dict:
    """Export ``model`` to ``out`` and check it. ``options`` (or keyword arguments naming
    :class:`ExportOptions` fields, which override it) say how.

    Returns the report also written to ``out/export.json``; raises ZhtuneError when a check
    fails (then ``out`` has no ``zhtune.json``)."""
    opts = dataclasses.replace(options if options is not None else ExportOptions(), **kwargs)
    src, backend = _load_encoder(model, opts.max_length)
    out = prepare_out_dir(out)
    if (out / "zhtune.json").exists():
        (out / "zhtune.json").unlink()  # re-export: no old manifest next to new files
    fp32, q8 = out / FP32_FILE, out / INT8_FILE
    report: dict = {"source": str(model), "opset": opts.opset, "max_length": backend.max_length}
    _export_fp32(backend, out, opts, report)
    labels = list(backend.labels)
    onnx32 = OnnxBackend.from_file(fp32, backend.tokenizer, labels, backend.max_length)
    splits = _load_data(opts.data)
    # 1. fp32 parity on sample texts
    sample = list(splits.dev.texts[:64]) if splits else SAMPLE_TEXTS
    _check_parity(backend, onnx32, sample, opts.tolerance, out, report)
    # 2. accuracy on the dev split (fp32 PyTorch, fp32 ONNX, int8 ONNX)
    chosen = FP32_FILE
    if opts.int8:
        quantize_onnx_int8(fp32, q8)
        chosen = INT8_FILE
    if splits is not None:
        _check_dev_accuracy(src, onnx32, splits, opts, out, report)
    elif opts.int8:
        report["int8_accuracy_check"] = "skipped (no labelled data)"
        print("warning: int8 accuracy not checked (no labelled data given)")
    report["sizes_mb"] = {
        f.name: round(f.stat().st_size / 2**20, 2) for f in (fp32, q8) if f.is_file()
    }
    report["onnx_file"] = chosen
    write_json(out / "export.json", report)
    write_manifest(
        out,
        "onnx",
        labels,
        onnx_file=chosen,
        int8=opts.int8,
        max_length=backend.max_length,
        source=str(model),
        input_names=list(onnx32.input_names),
    )
    return report


def _load_encoder(model: str, max_length: int | None) -> tuple[Classifier, EncoderBackend]:
    """The loaded classifier and its PyTorch encoder backend; ZhtuneError for other kinds."""
    from zhtune.classifier import Classifier
    from zhtune.serving.encoder import EncoderBackend

    def refuse(kind: str) -> ZhtuneError:
        return ZhtuneError(
            f"{model}: a model of kind {kind!r} cannot be exported to ONNX; export works on "
            "encoder classifiers (zhtune finetune runs, merged LoRA-head models, HF directories)"
        )

    manifest = read_manifest(model) if Path(model).is_dir() else None
    if manifest and manifest["kind"] in ("baseline", "onnx", "scoring", "lora-head"):
        raise refuse(manifest["kind"])
    src = Classifier.load(model, max_length=max_length, device="cpu")  # tracing runs on CPU
    backend = src.backend
    if not isinstance(backend, EncoderBackend):
        raise refuse(src.kind)
    return src, backend


def _export_fp32(backend: EncoderBackend, out: Path, opts: ExportOptions, report: dict) -> None:
    """``out/model.onnx`` (optimized unless told not to), the tokenizer and ``config.json``."""
    fp32 = out / FP32_FILE
    t0 = time.perf_counter()
    export_onnx(backend, fp32, opts.opset)
    report["optimized"] = opts.optimize and optimize_bert(fp32, backend.model.config)
    report["export_seconds"] = round(time.perf_counter() - t0, 2)
    backend.tokenizer.save_pretrained(str(out))
    backend.model.config.save_pretrained(str(out))


def _check_parity(
    backend: EncoderBackend,
    onnx32: OnnxBackend,
    sample: list[str],
    tolerance: float,
    out: Path,
    report: dict,
) -> None:
    """fp32 ONNX vs PyTorch probabilities on ``sample`` (in mixed-length batches of 4, so
    padding is exercised); ZhtuneError when they differ by more than ``tolerance``."""
    p_torch = backend.predict_proba(sample, batch_size=4)
    p_onnx = onnx32.predict_proba(sample, batch_size=4)
    diff = float(np.abs(p_torch - p_onnx).max())
    report["fp32_parity"] = {"texts": len(sample), "max_abs_diff": diff, "tolerance": tolerance}
    print(f"fp32 ONNX vs PyTorch: max |Δp| = {diff:.2e} over {len(sample)} texts (≤ {tolerance})")
    if not diff <= tolerance:
        raise ZhtuneError(
            f"ONNX parity check failed: max probability difference {diff:.2e} > {tolerance}; "
            f"the files in {out} are not usable (no zhtune.json written)"
        )


def _check_dev_accuracy(
    src: Classifier,
    onnx32: OnnxBackend,
    splits: Splits,
    opts: ExportOptions,
    out: Path,
    report: dict,
) -> None:
    """Dev-split accuracy of fp32 PyTorch, fp32 ONNX and (with ``int8``) int8 ONNX; ZhtuneError
    when the data's labels are not the model's or int8 loses over ``max_accuracy_drop``."""
    labels = list(onnx32.labels)
    gold = splits.dev.label_ids(splits.label_map)
    dev_labels = list(splits.label_map.names)
    if dev_labels != labels:
        raise ZhtuneError(
            f"the data's labels {dev_labels} differ from the model's {labels}; "
            "give the dataset the model was trained on"
        )
    texts, bs = splits.dev.texts, opts.batch_size
    acc = {"fp32_torch": accuracy(src.predict_proba(texts, bs), gold)}
    acc["fp32_onnx"] = accuracy(onnx32.predict_proba(texts, bs), gold)
    if opts.int8:
        onnx8 = OnnxBackend.from_file(out / INT8_FILE, onnx32.tokenizer, labels, onnx32.max_length)
        acc["int8_onnx"] = accuracy(onnx8.predict_proba(texts, bs), gold)
    report["dev_accuracy"] = {**acc, "rows": len(gold)}
    print(f"dev accuracy ({len(gold)} rows): " + ", ".join(f"{k} {v:.2f}%" for k, v in acc.items()))
    if opts.int8:
        drop = acc["fp32_onnx"] - acc["int8_onnx"]
        report["int8_accuracy_drop"] = drop
        if drop > opts.max_accuracy_drop:
            raise ZhtuneError(
                f"int8 accuracy check failed: {acc['int8_onnx']:.2f}% vs fp32 "
                f"{acc['fp32_onnx']:.2f}% (drop {drop:.2f} > {opts.max_accuracy_drop} points); "
                f"use the fp32 export (without --int8); no zhtune.json written in {out}"
            )


def _load_data(data: DataConfig | None) -> Splits | None:
    """The data's splits, or None when no labelled data is given."""
    if data is None or not data.source_given():
        return None
    from zhtune.data import load_splits

    return load_splits(data)


def data_from_run(model: str) -> DataConfig | None:
    """The DataConfig a run was trained with (its ``config.yaml``), or None."""
    import yaml

    from zhtune.data import DataConfig

    f = Path(model) / "config.yaml"
    if not f.is_file():
        return None
    try:
        raw = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        names = {fl.name for fl in dataclasses.fields(DataConfig)}
        cfg = DataConfig(**{k: v for k, v in raw.items() if k in names})
    except Exception as e:  # an unusable config is not fatal: the user can pass --dataset
        log.warning("%s: cannot read its data settings (%s)", f, e)
        return None
    return cfg if cfg.source_given() else None


# --- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zhtune export`` flags, the data flags included (for the dev-split check)."""
    from zhtune.config import add_config_args
    from zhtune.data import DataConfig

    p.add_argument("--model", required=True, help="encoder run directory or HF model directory")
    p.add_argument("--out", required=True, help="directory for the exported model")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--int8", action="store_true", help="also quantize to dynamic int8 and use it")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--max-length", type=int, help="max tokens per text (default: the model's)")
    p.add_argument(
        "--no-optimize",
        action="store_true",
        help="skip onnxruntime's transformer graph fusions",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |Δprobability| fp32 ONNX vs PyTorch"
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.5,
        help="max dev accuracy drop of int8 vs fp32, in points (default: 0.5)",
    )
    p.add_argument(
        "--no-accuracy-check",
        action="store_true",
        help="allow --int8 without labelled data (accuracy not checked)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch for the checks")
    p.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="export always runs on CPU (ONNX tracing and the checks); any other value is "
        "noted and ignored (default: cpu)",
    )
    add_config_args(p, DataConfig)


def run_cli(ns: argparse.Namespace) -> int:
    """``zhtune export``: export, check, and print where the model went."""
    from zhtune.config import config_from_args
    from zhtune.data import DataConfig

    if str(ns.device).lower() != "cpu":
        print(f"note: export runs on CPU; --device {ns.device} ignored", file=sys.stderr)
    given = config_from_args(DataConfig, ns)
    data: DataConfig | None = given
    if not given.source_given():
        data = data_from_run(ns.model)
        if data is not None:
            print(f"dev data: the run's own config.yaml (dataset={data.dataset or data.train})")
    if ns.int8 and data is None and not ns.no_accuracy_check:
        raise ZhtuneError(
            "--int8 checks the int8 accuracy on a dev split: give the labelled data "
            "(--dataset NAME or --train FILE), or --no-accuracy-check to skip the check"
        )
    options = ExportOptions(
        int8=ns.int8,
        data=data,
        opset=ns.opset,
        optimize=not ns.no_optimize,
        max_length=ns.max_length,
        tolerance=ns.tolerance,
        max_accuracy_drop=ns.max_accuracy_drop,
        batch_size=ns.batch_size,
    )
    t = time.perf_counter()
    report = run_export(ns.model, ns.out, options)
    sizes = ", ".join(f"{k} {v} MB" for k, v in report["sizes_mb"].items())
    print(
        f"exported {ns.model} -> {ns.out} ({report['onnx_file']}; {sizes}) "
        f"in {time.perf_counter() - t:.1f} s; checks passed"
    )
    return 0
