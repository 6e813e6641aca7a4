"""Batch prediction beyond one machine with Ray Data.

:class:`ClassifierPredictor` is a callable class for ``Dataset.map_batches``: every Ray actor
loads the :class:`zhtune.Classifier` once and then predicts batch after batch, so a model
is loaded ``num_actors`` times, not once per batch::

    import ray
    from zhtune.integrations.ray import predict_dataset

    ds = ray.data.read_parquet("s3://bucket/texts/")          # any dataset with a text column
    preds = predict_dataset(ds, "runs/finetune", num_actors=8)  # + label, confidence, probs
    preds.write_parquet("s3://bucket/predictions/")

``zhtune predict --engine ray --file texts.csv --out preds.jsonl`` does the same for one
file: the driver reads and validates the rows exactly like ``--engine local`` (same line
numbers, same bad-row handling), the actors predict, and the rows are written in input order,
in the same JSONL format. Connect to a cluster with ``--ray-address`` or ``RAY_ADDRESS``; the
model path must be readable on every node (shared storage) and zhtune installed there.

GPUs: ``--device cuda`` makes every actor ask Ray for ``--gpus-per-actor`` GPUs (1 unless
given; fractions share a GPU) and load its model there through :mod:`zhtune.device` (bf16
where the GPU runs it, probabilities in fp32). Ray hands each actor its GPU as that actor's
``cuda:0``, so ``cuda:N`` is refused; ``auto`` uses the GPU that ``--gpus-per-actor`` gives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.errors import ConfigError, ZhtuneError

BLOCK_ROWS = 2048  # rows per Ray block read on the driver


class ClassifierPredictor:
    """``map_batches`` callable: a batch dict of numpy arrays in, the same batch plus
    ``label`` (str), ``confidence`` (float) and ``probs`` ((B, n_labels) float64) out."""

    def __init__(
        self,
        model: str,
        text_column: str = "text",
        batch_size: int = 32,
        calibrated: bool = False,
        threads: int | None = None,
        device: str = "auto",
        **load_kw: Any,
    ) -> None:
        if threads:  # one actor per core by default: do not oversubscribe the node
            os.environ["ZHTUNE_THREADS"] = str(threads)
        from zhtune.classifier import Classifier

        # the device policy (zhtune.device, inside Classifier.load): the GPU Ray gave this actor
        self.clf = Classifier.load(model, calibrated=calibrated, device=device, **load_kw)
        self.labels = self.clf.labels
        self.text_column = text_column
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch[self.text_column]]
        probs = self.clf.predict_proba(texts, batch_size=self.batch_size)  # (B, C)
        best = probs.argmax(axis=1) if len(texts) else np.zeros(0, dtype=int)
        out = dict(batch)
        out["label"] = np.asarray([self.labels[i] for i in best], dtype=object)
        out["confidence"] = probs[np.arange(len(texts)), best].astype(np.float64)
        out["probs"] = probs.astype(np.float64)
        return out


def model_labels(model: str) -> list[str]:
    """Label names without loading the weights (zhtune.json, else config.json id2label)."""
    from zhtune.runs import read_manifest

    p = Path(model)
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("labels"):
        return list(manifest["labels"])
    cfg = p / "config.json"
    if cfg.is_file():
        id2label = json.loads(cfg.read_text(encoding="utf-8")).get("id2label") or {}
        if id2label:
            return [id2label[k] for k in sorted(id2label, key=int)]
    from zhtune.classifier import Classifier

    return Classifier.load(model, device="cpu").labels


def actor_device(device: str | None, gpus_per_actor: float = 0.0) -> tuple[str, float]:
    """``--device`` for Ray actors -> (the device each actor loads on, GPUs it asks Ray for).

    ``cuda``: ``gpus_per_actor`` GPUs (1 when 0); ``cpu``: none (``gpus_per_actor`` > 0 is a
    contradiction); ``auto``: ``gpus_per_actor`` as given (the actor uses a GPU if it gets one).
    """
    from zhtune.device import resolve_device

    s = (device or "auto").strip().lower()
    if s.startswith("cuda:") and s[5:].isdigit():
        raise ConfigError(
            f"--device {device}: with --engine ray, Ray assigns each actor its GPU (its cuda:0); "
            "use --device cuda and --gpus-per-actor"
        )
    if s not in ("auto", "cpu", "cuda"):
        resolve_device(device)  # the policy's one-line error for a bad spec
    if gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    if s == "cuda":
        return "cuda", gpus_per_actor or 1.0
    if s == "cpu" and gpus_per_actor:
        raise ConfigError(f"--device cpu with --gpus-per-actor {gpus_per_actor}: pick one")
    return s, gpus_per_actor


def predict_dataset(
    ds: Any,
    model: str,
    *,
    text_column: str = "text",
    batch_size: int = 32,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    calibrated: bool = False,
    device: str = "auto",
    **load_kw: Any,
) -> Any:
    """``ds`` (a Ray Dataset with ``text_column``) with predictions; lazy, like all Ray Data.

    ``num_actors`` default: the cluster's CPUs / ``cpus_per_actor`` (at least 1). ``device``
    (see :func:`actor_device`): ``cuda`` asks Ray for ``gpus_per_actor`` GPUs per actor (1
    unless given) and loads each actor's model on its GPU."""
    import ray

    device, gpus_per_actor = actor_device(device, gpus_per_actor)

    if num_actors is None:
        cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
        num_actors = max(1, int(cpus // max(cpus_per_actor, 1e-9)))
    threads = max(1, int(cpus_per_actor))
    return ds.map_batches(
        ClassifierPredictor,
        fn_constructor_kwargs={
            "model": str(model),
            "text_column": text_column,
            "batch_size": batch_size,
            "calibrated": calibrated,
            "threads": threads,
            "device": device,
            **load_kw,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )


# --- zhtune predict --engine ray -----------------------------------------------------------
def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--engine ray (batch prediction with Ray Data; needs --file)")
    g.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to use, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, "
        "else a local Ray started for this run)",
    )
    g.add_argument(
        "--num-actors",
        type=int,
        default=None,
        help="actors, each with its own copy of the model (default: CPUs / --cpus-per-actor)",
    )
    g.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (default: 1)")
    g.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs per actor (default: 0, or 1 with --device cuda; a fraction shares a GPU)",
    )


def _blocks(path: str, text_column: str, bad: Any, fmt: str) -> tuple[list[Any], int]:
    """The validated (line, text) rows of ``path`` as Arrow tables of ``BLOCK_ROWS`` rows."""
    import pyarrow as pa

    from zhtune.serving.predict import iter_texts

    tables, lines, texts, n = [], [], [], 0
    for no, text in iter_texts(path, text_column, bad, fmt):
        lines.append(no)
        texts.append(text)
        if len(lines) >= BLOCK_ROWS:
            tables.append(pa.table({"line": lines, "text": texts}))
            n, lines, texts = n + len(lines), [], []
    if lines:
        tables.append(pa.table({"line": lines, "text": texts}))
        n += len(lines)
    return tables, n


def predict_file_ray(
    model: str,
    path: str,
    out: str | None,
    *,
    text_column: str = "text",
    batch_size: int = 32,
    bad: Any = None,
    fmt: str = "auto",
    calibrated: bool = False,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    **load_kw: Any,
) -> int:
    """Like :func:`zhtune.serving.predict.predict_file` (same rows, order and JSONL) on Ray actors.
    Needs ``ray.init`` first. Returns the number of predictions written."""
    import ray

    from zhtune.data.readers import BadRows

    bad = bad or BadRows()
    tables, n = _blocks(path, text_column, bad, fmt)
    labels = model_labels(model)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order
    ctx.enable_progress_bars = sys.stderr.isatty()
    sink = Path(out).open("w", encoding="utf-8") if out else sys.stdout
    try:
        if n:
            ds = ray.data.from_arrow(tables)
            preds = predict_dataset(
                ds,
                model,
                text_column="text",
                batch_size=batch_size,
                num_actors=num_actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                calibrated=calibrated,
                **load_kw,
            )
            for b in preds.iter_batches(batch_size=BLOCK_ROWS, batch_format="numpy"):
                for no, text, label, conf, row in zip(
                    b["line"], b["text"], b["label"], b["confidence"], b["probs"], strict=True
                ):
                    rec = {
                        "line": int(no),
                        "text": str(text),
                        "label": str(label),
                        "confidence": float(conf),
                        "probs": {k: float(v) for k, v in zip(labels, row, strict=True)},
                    }
                    sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if out:
            sink.close()
        else:
            sink.flush()
    return n


def run_ray_cli(ns: argparse.Namespace) -> int:
    """``zhtune predict --engine ray``: connect/start Ray, predict ``--file``, write ``--out``."""
    from zhtune.data.readers import BadRows
    from zhtune.serving.predict import check_file

    if not ns.file:
        raise ZhtuneError("--engine ray predicts a --file (use --engine local for --text)")
    if ns.batch_size < 1:
        raise ZhtuneError(f"--batch-size must be >= 1, got {ns.batch_size}")
    check_file(ns.file, ns.file_format)
    device = getattr(ns, "device", "auto") or "auto"
    _, gpus = actor_device(device, ns.gpus_per_actor)  # bad specs fail before Ray starts
    try:
        import ray
    except ImportError:
        raise ZhtuneError('--engine ray needs Ray Data: pip install "ray[data]"') from None
    started = False
    address = ns.ray_address or os.environ.get("RAY_ADDRESS") or None
    if gpus and not ray.is_initialized() and address is None:  # a local Ray: this machine's
        from zhtune.device import resolve_device

        resolve_device("cuda")  # one line when there is no CUDA here
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    bad = BadRows(ns.on_bad_row)
    kw: dict[str, Any] = {"int8": True} if getattr(ns, "int8", False) else {}
    try:
        have = ray.cluster_resources().get("GPU", 0)
        if gpus and have < gpus:
            raise ConfigError(
                f"--device {device}: each actor needs {gpus:g} GPU(s) and the Ray cluster has "
                f"{have:g}; use --device cpu or a cluster with GPUs"
            )
        n = predict_file_ray(
            ns.model,
            ns.file,
            ns.out,
            text_column=ns.text_column,
            batch_size=ns.batch_size,
            bad=bad,
            fmt=ns.file_format,
            calibrated=ns.calibrated,
            num_actors=ns.num_actors,
            cpus_per_actor=ns.cpus_per_actor,
            gpus_per_actor=ns.gpus_per_actor,
            device=device,
            **kw,
        )
    finally:
        if started:
            ray.shutdown()
    skipped = sum(bad.counts.values())
    msg = f"{n} predictions (Ray)" + (f" written to {ns.out}" if ns.out else "")
    if skipped:
        msg += f"; {skipped} malformed rows skipped"
    print(msg, file=sys.stderr)
    return 0
