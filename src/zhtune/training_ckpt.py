"""Checkpoints of Trainer-based runs: which ones are complete, and which one to resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from zhtune.errors import ZhtuneError

log = logging.getLogger("zhtune")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def _step_of(p: Path) -> int:
    try:
        return int(p.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def is_complete_checkpoint(p: Path) -> bool:
    """Weights and a ``trainer_state.json`` that parses (a kill while the Trainer wrote it,
    its last file, leaves it truncated)."""
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        return False
    try:
        json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def find_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` directory, or None."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    cands = [p for p in d.glob("checkpoint-*") if p.is_dir() and _step_of(p) >= 0]
    for p in sorted(cands, key=_step_of, reverse=True):
        if is_complete_checkpoint(p):
            return p
        log.warning("skipping incomplete checkpoint %s", p)
    return None


def _remove_stale_checkpoints(ckpt_dir: Path) -> None:
    """A fresh start in a used run directory: old checkpoints would mix with the new ones."""
    import shutil

    old = (
        sorted(p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()) if ckpt_dir.is_dir() else []
    )
    if old:
        log.warning("starting afresh: removing %d old checkpoint(s) in %s", len(old), ckpt_dir)
        for p in old:
            shutil.rmtree(p)


def resolve_resume(spec: str, ckpt_dir: str | Path) -> Path | None:
    s = (spec or "none").strip()
    if s.lower() == "none":
        return None
    if s.lower() == "auto":
        return find_checkpoint(ckpt_dir)
    p = Path(s)
    if not p.is_dir():
        raise ZhtuneError(f"resume_from_checkpoint: {p} is not a directory")
    if not is_complete_checkpoint(p):
        raise ZhtuneError(
            f"resume_from_checkpoint: {p} is not a complete checkpoint "
            "(needs trainer_state.json and *.safetensors weights)"
        )
    return p
