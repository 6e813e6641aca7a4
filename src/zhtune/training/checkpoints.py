"""One checkpoint system for every training command.

A checkpoint is a directory ``checkpoints/<prefix>-<step>/`` holding model weights
(safetensors) and a ``trainer_state.json`` that parses; anything else is incomplete (a kill
while it was written) and is skipped. Two writers use it:

- the Hugging Face ``Trainer`` (finetune, lora, distill): ``checkpoint-N/``;
- the pretraining loop: ``step-00000N/`` written by :func:`save_checkpoint` without pickle --
  ``model.safetensors``, ``optimizer.safetensors`` (AdamW tensors, ``state.<i>.<name>``),
  ``rng.safetensors``, ``optimizer.json``, ``scheduler.json`` and ``trainer_state.json``
  (written last) -- into ``.tmp-step-.../`` and renamed into place.

Both are found with :func:`find_checkpoint` and chosen with :func:`resolve_resume`
(``auto`` | ``none`` | a path); :func:`prune_checkpoints` keeps the newest N.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from zhtune.errors import ZhtuneError

log = logging.getLogger("zhtune")

STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
PREFIXES = ("checkpoint-", "step-")


def _step_of(p: Path) -> int:
    for prefix in PREFIXES:
        if p.name.startswith(prefix):
            try:
                return int(p.name[len(prefix) :])
            except ValueError:
                return -1
    return -1


def is_complete_checkpoint(p: Path) -> bool:
    """Weights and a ``trainer_state.json`` that parses (a kill while it was written, its
    last file, leaves it missing or truncated)."""
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        return False
    try:
        json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones and ``.tmp-*`` are skipped)."""
    d = Path(root)
    if not d.is_dir():
        return []
    cands = [p for p in d.iterdir() if p.is_dir() and _step_of(p) >= 0]
    return [p for p in sorted(cands, key=_step_of) if is_complete_checkpoint(p)]


def find_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint in ``root``, or None (incomplete ones are logged)."""
    d = Path(root)
    if not d.is_dir():
        return None
    cands = [p for p in d.iterdir() if p.is_dir() and _step_of(p) >= 0]
    for p in sorted(cands, key=_step_of, reverse=True):
        if is_complete_checkpoint(p):
            return p
        log.warning("skipping incomplete checkpoint %s", p)
    return None


latest_checkpoint = find_checkpoint


def resolve_resume(spec: str | None, root: str | Path) -> Path | None:
    """``resume_from_checkpoint``: ``none``, ``auto`` (newest complete one in ``root``) or a path."""
    s = (spec or "none").strip()
    if s.lower() == "none":
        return None
    if s.lower() == "auto":
        return find_checkpoint(root)
    p = Path(s)
    if not p.is_dir():
        raise ZhtuneError(f"resume_from_checkpoint: {p} is not a directory")
    if not is_complete_checkpoint(p):
        raise ZhtuneError(
            f"resume_from_checkpoint: {p} is not a complete checkpoint "
            f"(needs {STATE_FILE} and *.safetensors weights); allowed: auto, none or a path "
            "like OUT/checkpoints/checkpoint-500"
        )
    return p


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints (``keep`` <= 0 keeps all)."""
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_checkpoints(root: str | Path) -> None:
    """A fresh start in a used run directory: old checkpoints would mix with the new ones."""
    d = Path(root)
    old = sorted(p for p in d.iterdir() if p.is_dir() and _step_of(p) >= 0) if d.is_dir() else []
    if old:
        log.warning("starting afresh: removing %d old checkpoint(s) in %s", len(old), d)
        for p in old:
            shutil.rmtree(p)


_remove_stale_checkpoints = remove_stale_checkpoints  # the name the Trainer plumbing used


# --- the pretraining loop's checkpoints (no pickle) ----------------------------------------
def _optimizer_to_files(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict (keyed by parameter index, or by name under FSDP) as tensors
    ``state.<key>.<name>`` and JSON."""
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int | str, dict] = {}

    def param_key(key: str) -> int | str:  # torch's index, or a parameter name (FSDP)
        return int(key) if key.isdigit() else key

    for key, value in tensors.items():
        idx, name = key.removeprefix("state.").rsplit(".", 1)
        state.setdefault(param_key(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.rsplit(".", 1)
        state.setdefault(param_key(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict,
    scheduler,
    rng: dict[str, torch.Tensor],
    state: dict,
    keep: int = 3,
) -> Path:
    """Write a complete checkpoint atomically and prune old ones; returns its path.
    ``model`` / ``optimizer`` may be full state dicts instead (gathered from FSDP)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if isinstance(model, torch.nn.Module):
        save_model(model, str(tmp / "model.safetensors"))  # tied weights saved once
    else:
        save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    sd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    opt_tensors, opt_meta = _optimizer_to_files(sd)
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
    prune_checkpoints(root, keep)
    return final


def read_state(path: str | Path) -> dict:
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise ZhtuneError(f"{path} is not a complete pretraining checkpoint (no {STATE_FILE})")
    return json.loads(f.read_text(encoding="utf-8"))


def _mismatch(path: Path, missing: list[str], unexpected: list[str]) -> ZhtuneError:
    return ZhtuneError(
        f"{path}: the checkpoint does not match the model (missing {missing[:3]}, "
        f"unexpected {unexpected[:3]}); use --resume-from-checkpoint none or another --out"
    )


def read_optimizer(path: Path) -> dict:
    """The optimizer state dict of a pretraining checkpoint."""
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    return _optimizer_from_files(load_file(str(path / "optimizer.safetensors")), meta)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    load_states: Callable[[dict, dict], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore model, optimizer and scheduler in place; return (rng tensors, trainer state).
    ``load_states(model_state, optimizer_state)``, when given, loads the two instead (FSDP)."""
    path = Path(path)
    state = read_state(path)
    if load_states is None:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise _mismatch(path, missing, unexpected)
        optimizer.load_state_dict(read_optimizer(path))
    else:
        weights = load_file(str(path / "model.safetensors"))
        names = set(model.state_dict())
        if set(weights) != names:
            raise _mismatch(path, sorted(names - set(weights)), sorted(set(weights) - names))
        load_states(weights, read_optimizer(path))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text(encoding="utf-8")))
    return load_file(str(path / "rng.safetensors")), state


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


def refuse_to_delete_checkpoints(ckpt_dir: Path, overwrite: bool) -> list[Path]:
    """A fresh start never deletes or mixes with an earlier run's complete checkpoints unless
    ``overwrite``: a one-line error naming them. Returns the checkpoints found."""
    from zhtune.errors import ConfigError

    found = list_checkpoints(ckpt_dir)
    if found and not overwrite:
        raise ConfigError(
            f"{ckpt_dir} holds {len(found)} complete checkpoint(s) of an earlier run (newest "
            f"{found[-1].name}); resume with --resume-from-checkpoint auto, use another --out, "
            "or pass --overwrite to delete them"
        )
    return found
