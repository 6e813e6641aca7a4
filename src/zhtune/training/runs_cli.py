"""``zhtune runs ls [DIR]``: the runs under a directory, what they are and how they ended.

A run directory is one with ``zhtune.json``, ``status.json`` or a ``config.yaml`` next to
``history.jsonl`` / ``checkpoints/``; directories that hold runs (a quickstart, a tune
search) are searched too. Status comes from ``status.json`` (written by the training
commands, see :mod:`zhtune.training.tracking`) and the files present:

- ``finished``: the model, ``zhtune.json`` and ``metrics.json`` were written;
- ``running``: status ``running`` and its process is alive on this host;
- ``interrupted``: stopped (Ctrl-C, killed, time limit) before the end; ``resumable`` when a
  complete checkpoint exists (rerun the same command with the same ``--out``);
- ``failed``: ended with an error (shown), or died without any checkpoint.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from zhtune.errors import ZhtuneError
from zhtune.runs import MANIFEST
from zhtune.training.tracking import STATUS_FILE, is_alive, read_status

SKIP_DIRS = {"checkpoints", "tensorboard", "mlruns", "__pycache__", "node_modules"}
COLUMNS = [
    ("run", "run"),
    ("kind", "kind"),
    ("dataset", "dataset"),
    ("metrics", "key metrics"),
    ("train", "train time"),
    ("when", "last update"),
    ("status", "status"),
]


# --- discovery ---------------------------------------------------------------------------
def is_run_dir(d: Path) -> bool:
    if (d / MANIFEST).is_file() or (d / STATUS_FILE).is_file():
        return True
    return (d / "config.yaml").is_file() and (
        (d / "history.jsonl").is_file() or (d / "checkpoints").is_dir()
    )


def find_runs(root: Path, max_depth: int = 4) -> list[Path]:
    """Run directories under ``root`` (``root`` itself when it is one), sorted by path."""
    if is_run_dir(root):
        return [root]
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir())
        except OSError:
            return
        for c in children:
            if c.name in SKIP_DIRS or c.name.startswith("."):
                continue
            if is_run_dir(c):
                found.append(c)
            elif depth < max_depth:
                walk(c, depth + 1)

    walk(root, 1)
    return found


# --- one run -----------------------------------------------------------------------------
def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config(run: Path) -> dict:
    try:
        data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def has_checkpoint(run: Path) -> bool:
    """A complete checkpoint (its ``trainer_state.json`` is written last) under checkpoints/."""
    return any((run / "checkpoints").glob("*/trainer_state.json"))


def command_of(cfg: dict) -> str:
    name = str(cfg.get("_config_class") or "")
    return name.removesuffix("Config").lower() or "?"


def dataset_of(cfg: dict) -> str:
    for key in ("dataset", "train", "data_dir", "text_files"):
        v = cfg.get(key)
        if v:
            items = v if isinstance(v, list) else [v]
            return ",".join(Path(str(x)).name or str(x) for x in items)
    return ""


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def key_metrics(run: Path, metrics: dict) -> str:
    """Test accuracy / macro-F1 (classifiers), held-out loss / perplexity (pretraining), or
    the last dev evaluation of a run still without metrics.json."""
    keys = [("accuracy", "acc"), ("macro_f1", "F1"), ("eval_loss", "loss"), ("perplexity", "ppl")]
    parts = [f"{short} {_fmt(metrics[k])}" for k, short in keys if metrics.get(k) is not None]
    if parts:
        return " ".join(parts)
    last = None
    try:
        with (run / "history.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if row.get("kind") == "eval" or "eval_loss" in row:
                    last = row
                elif row.get("loss") is not None and last is None:
                    last = {"step": row.get("step"), "loss": row["loss"]}
    except (OSError, ValueError):
        return ""
    if not last:
        return ""
    if "eval_macro_f1" in last:
        return f"dev F1 {_fmt(last['eval_macro_f1'])} (step {last.get('step')})"
    if "eval_loss" in last:
        return f"dev loss {_fmt(last['eval_loss'])} (step {last.get('step')})"
    return f"train loss {_fmt(last['loss'])} (step {last.get('step')})"


def _ts(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def run_status(run: Path, status: dict | None = None) -> tuple[str, str]:
    """(status, detail) with status one of finished, running, interrupted, failed."""
    s = read_status(run) if status is None else status
    state = s.get("status")
    outputs = (run / MANIFEST).is_file() and (run / "metrics.json").is_file()
    ckpt = has_checkpoint(run)
    resumable = ("interrupted", "resumable") if ckpt else ("interrupted", "no checkpoint")
    if state == "finished":
        return "finished", ""
    if state == "failed":
        return "failed", str(s.get("error", ""))
    if state == "interrupted":
        return resumable
    if state in ("running", "trained"):
        started = _ts(s.get("started")) or 0.0
        if outputs and (run / "metrics.json").stat().st_mtime >= started - 1:
            return "finished", ""
        alive = is_alive(s.get("pid"), s.get("host"))
        if alive:
            return "running", f"pid {s.get('pid')}"
        if alive is None:
            return "running?", f"on {s.get('host')}, cannot check"
        if ckpt:
            return "interrupted", "resumable (process ended)"
        return "failed", "process ended without a checkpoint"
    if outputs:  # a run written before status.json existed, or a baseline
        return "finished", ""
    return resumable if ckpt else ("failed", "no model, metrics or checkpoint")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def describe(run: Path, root: Path) -> dict:
    """One row of ``zhtune runs ls`` (also its --json record)."""
    manifest = _json(run / MANIFEST)
    metrics = _json(run / "metrics.json")
    cfg = _config(run)
    status = read_status(run)
    state, detail = run_status(run, status)
    when = status.get("updated")
    if not when:
        newest = max((p.stat().st_mtime for p in run.iterdir() if p.is_file()), default=None)
        when = (
            datetime.fromtimestamp(newest).astimezone().isoformat(timespec="seconds")
            if newest
            else ""
        )
    rel = run.relative_to(root) if run != root and root in run.parents else run
    return {
        "run": str(rel) if str(rel) != "." else run.name,
        "path": str(run),
        "kind": (manifest.get("kind") or command_of(cfg))
        + (f" x{status['world_size']}" if (status.get("world_size") or 1) > 1 else ""),
        "command": command_of(cfg),
        "dataset": dataset_of(cfg),
        "metrics": key_metrics(run, metrics),
        "train": _duration(metrics.get("train_seconds")),
        "when": str(when).replace("T", " ")[:16],
        "status": f"{state} ({detail})" if detail else state,
        "state": state,
        "detail": detail,
        "world_size": status.get("world_size"),
        "mlflow_run_id": status.get("mlflow_run_id"),
    }


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="runs_action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="list the runs under DIR: kind, dataset, metrics, status")
    ls.add_argument("dir", nargs="?", default="runs", help="directory to search (default: runs)")
    ls.add_argument("--depth", type=int, default=4, help="how deep to search (default: 4)")
    ls.add_argument("--json", action="store_true", help="one JSON object per run instead")


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import format_table

    root = Path(ns.dir)
    if not root.is_dir():
        raise ZhtuneError(f"{root}: no such directory")
    rows = [describe(r, root) for r in find_runs(root, ns.depth)]
    if ns.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no runs under {root}")
        return 0
    print(format_table(rows, COLUMNS))
    resumable = [
        r["path"] for r in rows if r["state"] == "interrupted" and has_checkpoint(Path(r["path"]))
    ]
    if resumable:
        print(
            f"\n{len(resumable)} interrupted run(s) can resume: rerun the same command with the "
            f"same --out (e.g. {resumable[0]}); resume_from_checkpoint defaults to auto"
        )
    return 0
