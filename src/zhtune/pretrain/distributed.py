"""Data-parallel pretraining under ``torchrun`` / ``accelerate launch`` (plain PyTorch DDP).

Every rank builds the same *global* batch (``batch_size`` × processes × accumulation
chunks) from the same seeded order and masks it with the same seeded generator, then trains
on its own rows of it (:func:`my_rows`). Because every rank knows the whole batch, it knows
the number of scored positions M of the whole step without any communication, so the loss
is ``sum of cross-entropies of my rows / M`` (times the world size, since DDP averages the
gradients): the gradient of every step equals the one-process gradient of the same global
batch, up to floating-point summation order. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("zhtune")


def launched() -> bool:
    """True under torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group (gloo on CPU, nccl on CUDA); returns (rank, world, device)."""
    for engine in ("DEEPSPEED", "FSDP"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() in ("1", "true"):
            from zhtune.errors import ConfigError

            raise ConfigError(
                f"zhtune pretrain runs plain DDP; the {engine.lower()} accelerate configs apply to "
                "finetune/lora only (use configs/distributed/accelerate_ddp.yaml or torchrun)"
            )
    if not launched():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def sum_scalar(value: float, device: torch.device) -> float:
    """The sum of ``value`` over all ranks."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def rank0_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks stop at the same step)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_rng(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's torch random state (dropout), in rank order."""
    if not active():
        return [state]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def my_rows(batch: dict, rank: int, world: int, accum: int) -> list[dict]:
    """This rank's micro-batches of a global batch: rows are split into ``world × accum``
    consecutive parts (rank r takes parts r·accum .. r·accum + accum - 1), each trimmed to
    its own longest row."""
    n = batch["input_ids"].shape[0]
    parts = torch.arange(n).tensor_split(world * accum)[rank * accum : (rank + 1) * accum]
    micro = []
    for rows in parts:
        if len(rows) == 0:
            continue
        part = {k: v[rows] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(1).max())  # right padding: trim the tail
        micro.append({k: v[:, :width] for k, v in part.items()})
    return micro


class Scorer(torch.nn.Module):
    """The model behind one ``forward`` (what DDP wraps): logits and targets at the scored
    positions (:func:`zhtune.pretrain.model.predict_targets`)."""

    def __init__(self, model: torch.nn.Module, objective: str) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from zhtune.pretrain.model import predict_targets

        return predict_targets(self.model, batch, self.objective)


def wrap(model: torch.nn.Module, objective: str, device: torch.device) -> torch.nn.Module:
    """``Scorer(model)``, inside ``DistributedDataParallel`` when there are several ranks."""
    scorer = Scorer(model, objective)
    if not active():
        return scorer
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(scorer, device_ids=ids)


def close() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()
