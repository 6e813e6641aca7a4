"""Pretraining checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint is ``out/checkpoints/step-00000500/`` holding

- ``model.safetensors``      the model weights (``safetensors.torch.save_model``),
- ``optimizer.safetensors``  AdamW's per-parameter tensors (``state.<i>.<name>``),
- ``rng.safetensors``        random states as uint8 tensors (torch, masking, CUDA),
- ``optimizer.json``         AdamW's param groups; ``scheduler.json`` the LR scheduler,
- ``trainer_state.json``     step, data position, history, config (written last).

It is written into ``.tmp-step-.../`` and renamed into place, so a directory named
``step-*`` is always complete; the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from zhtune.errors import ConfigError, ZhtuneError

STATE_FILE = "trainer_state.json"


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rng: dict[str, torch.Tensor],
    state: dict,
    keep: int = 3,
) -> Path:
    """Write a complete checkpoint atomically and prune old ones; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta), encoding="utf-8")
    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
    (tmp / STATE_FILE).write_text(
        json.dumps({"step": step, **state}, ensure_ascii=False), encoding="utf-8"
    )
    if final.exists():  # the same step written again (after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ``.tmp-*`` directories are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(path: str | Path) -> dict:
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise ZhtuneError(f"{path} is not a complete pretraining checkpoint (no {STATE_FILE})")
    return json.loads(f.read_text(encoding="utf-8"))


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler
) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore model, optimizer and scheduler in place; return (rng tensors, trainer state)."""
    path = Path(path)
    state = read_state(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ZhtuneError(
            f"{path}: the checkpoint does not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); use --resume-from-checkpoint none or another --out"
        )
    opt_meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    optimizer.load_state_dict(
        _optimizer_from_files(load_file(str(path / "optimizer.safetensors")), opt_meta)
    )
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text(encoding="utf-8")))
    return load_file(str(path / "rng.safetensors")), state


def find_checkpoint(value: str, root: str | Path) -> Path | None:
    """``resume_from_checkpoint``: ``none``, ``auto`` (newest complete one in ``root``) or a path."""
    if value == "none":
        return None
    if value == "auto":
        return latest_checkpoint(root)
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"config field 'resume_from_checkpoint': {value} is not a complete checkpoint "
            "directory; allowed: auto, none or a path like OUT/checkpoints/step-00000500"
        )
    return path


def check_resumable(path: Path, config: dict, corpus_key: str, fields: tuple[str, ...]) -> None:
    """Refuse to resume a checkpoint written with another model shape, batch, seed or corpus."""
    state = read_state(path)
    saved = state.get("config", {})
    diff = [
        f"{k}={saved.get(k)!r} (now {config[k]!r})" for k in fields if saved.get(k) != config[k]
    ]
    if diff or state.get("corpus_key") != corpus_key:
        why = ", ".join(diff) or "a different corpus"
        raise ZhtuneError(
            f"cannot resume from {path}: it was written with {why}; "
            "use --resume-from-checkpoint none or another --out"
        )
