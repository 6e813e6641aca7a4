"""Data-parallel pretraining under ``torchrun`` / ``accelerate launch`` (plain PyTorch DDP).

Every rank builds the same *global* batch (``batch_size`` × processes × accumulation
chunks) from the same seeded order and masks it with the same seeded generator, then trains
on its own rows of it (:func:`my_rows`). Because every rank knows the whole batch, it knows
the number of scored positions M of the whole step without any communication, so the loss
is ``sum of cross-entropies of my rows / M`` (times the world size, since DDP averages the
gradients): the gradient of every step equals the one-process gradient of the same global
batch, up to floating-point summation order. Only rank 0 writes files.

With ``--sharding fsdp|zero2`` (or an accelerate FSDP config) the scorer is sharded with
PyTorch FSDP2 instead of wrapped in DDP (:mod:`zhtune.pretrain.sharding`): the same loss
scaling holds (FSDP's reduce-scatter averages too), and checkpoints hold full state dicts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("zhtune")


def launched() -> bool:
    """True under torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: torch.device, sharding: str = "none") -> tuple[int, int, torch.device, str]:
    """Join the process group (gloo on CPU, nccl on CUDA); returns (rank, world, device,
    sharding mode: ``--sharding``, or auto from the accelerate config)."""
    from zhtune.pretrain.sharding import resolve_mode

    mode = resolve_mode(sharding)
    if not launched():
        if mode != "none":
            log.info("sharding %s with one process: nothing to shard, plain training", mode)
        return 0, 1, device, "none"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, mode


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


def wrap(
    model: torch.nn.Module, objective: str, device: torch.device, sharding: str = "none"
) -> torch.nn.Module:
    """``Scorer(model)``, inside ``DistributedDataParallel`` when there are several ranks,
    or sharded with FSDP2 (``sharding`` fsdp / zero2; build the optimizer after this)."""
    scorer = Scorer(model, objective)
    if not active():
        return scorer
    if sharding != "none":
        from zhtune.pretrain.sharding import shard

        if objective == "electra":
            from zhtune.errors import ConfigError

            raise ConfigError("sharding: objective electra supports DDP only, not FSDP/ZeRO-2")

        body = "roberta.encoder.layer" if objective == "mlm" else "model.layers"
        return shard(scorer, list(model.get_submodule(body).children()), sharding)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(scorer, device_ids=ids)


def sync_gradients(scorer: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """A context for one micro-batch's backward: without ``sync``, gradients are only
    accumulated locally (DDP ``no_sync``; FSDP ``set_requires_gradient_sync(False)``)."""
    if sync or not active():
        return contextlib.nullcontext()
    from torch.nn.parallel import DistributedDataParallel as DDP

    return scorer.no_sync() if isinstance(scorer, DDP) else _fsdp_no_sync(scorer)


@contextlib.contextmanager
def _fsdp_no_sync(scorer: Any) -> Iterator[None]:  # an FSDPModule
    scorer.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        scorer.set_requires_gradient_sync(True)


def checkpoint_states(model: Any, optimizer: Any, sharding: str) -> tuple[Any, Any]:
    """What a checkpoint saves: the model and optimizer themselves, or under FSDP their full
    state dicts gathered on rank 0 (a collective: every rank calls it)."""
    if sharding == "none" or not active():
        return model, optimizer
    from zhtune.pretrain.sharding import full_states

    return full_states(model, optimizer)


def state_loader(model: Any, optimizer: Any, sharding: str) -> Callable[[dict, dict], None] | None:
    """How a resume loads a checkpoint's full state dicts: None (in place) or into FSDP."""
    if sharding == "none" or not active():
        return None
    from zhtune.pretrain.sharding import load_full_states

    return lambda weights, optim: load_full_states(model, optimizer, weights, optim)


def close() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()
