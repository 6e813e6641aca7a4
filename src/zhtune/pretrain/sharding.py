"""Sharded data parallelism for pretraining: PyTorch FSDP2 (``fully_shard``).

``--sharding fsdp`` shards parameters, gradients and optimizer state over the processes
(ZeRO-3: each layer's parameters are gathered for its forward and backward and freed after).
``--sharding zero2`` keeps the gathered parameters from the forward to the backward
(``reshard_after_forward=False``): gradients and optimizer state stay sharded, which is
ZeRO-2's memory/communication trade. Each transformer layer is one FSDP unit; the root unit
(embeddings, LM head, tied to the embeddings) is the :class:`~zhtune.pretrain.distributed.Scorer`
around the model, because the loop calls the model's body and head, not ``model.forward``.

FSDP's reduce-scatter averages gradients over the processes, as DDP's all-reduce does, so the
loop's loss scaling (``world × sum CE / M``) gives the one-process gradient of the global
batch under every mode. Checkpoints and the saved model are *full* state dicts gathered on
rank 0 (``torch.distributed.checkpoint.state_dict``): a normal Hugging Face model directory.

Measured on CPU with gloo only (tests/test_pretrain_sharding.py); untested on GPUs (nccl).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from zhtune.errors import ConfigError

log = logging.getLogger("zhtune")

MODES = ("none", "fsdp", "zero2")
# accelerate's FSDP1 strategy names (FSDP_RESHARD_AFTER_FORWARD / FSDP_SHARDING_STRATEGY,
# names or their 1-based numbers) and FSDP2's booleans -> our modes
_ACCELERATE = {
    "true": "fsdp", "false": "zero2", "full_shard": "fsdp", "1": "fsdp",
    "shard_grad_op": "zero2", "2": "zero2", "no_shard": "none", "3": "none",
}  # fmt: skip


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true")


def resolve_mode(requested: str) -> str:
    """The sharding mode: ``--sharding`` when it is not ``auto``; else the one that the
    ``accelerate launch`` config asks for (its FSDP env vars), else ``none``."""
    if requested != "auto":
        return requested
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(deepspeed_message())
    if not _env_true("ACCELERATE_USE_FSDP"):
        return "none"
    version = os.environ.get("FSDP_VERSION", "1")
    raw = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if version == "1" and raw in ("true", "false"):  # FSDP1: the strategy name is the setting
        raw = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").lower()
    if raw not in _ACCELERATE:
        raise ConfigError(
            f"the accelerate FSDP setting {raw.upper()} is not supported by zhtune pretrain "
            "(FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or FSDP2's reshard_after_forward true/false)"
        )
    mode = _ACCELERATE[raw]
    log.info("sharding %s (from the accelerate FSDP config)", mode)
    return mode


def deepspeed_message() -> str:
    """The one-line refusal of the accelerate DeepSpeed config."""
    try:
        import deepspeed  # noqa: F401

        why = "zhtune pretrain has no DeepSpeed engine (untested without GPUs)"
    except ImportError:
        why = "deepspeed is not installed (pip install deepspeed) and zhtune pretrain has no DeepSpeed engine"
    return (
        f"{why}: for ZeRO-2 use --sharding zero2 (PyTorch FSDP, gradients and optimizer state "
        "sharded) under torchrun or accelerate launch with configs/distributed/accelerate_ddp.yaml"
    )


def shard(scorer: torch.nn.Module, layers: list[torch.nn.Module], mode: str) -> torch.nn.Module:
    """``fully_shard`` each transformer layer, then the whole scorer (in place)."""
    from torch.distributed.fsdp import fully_shard

    reshard = mode == "fsdp"  # zero2: keep the gathered parameters for the backward
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard)
    fully_shard(scorer, reshard_after_forward=reshard)
    return scorer


def full_states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Collective: the full model and optimizer state dicts (on the CPU) on rank 0, empty
    dicts elsewhere. The optimizer's state is keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    return model_state, get_optimizer_state_dict(model, optimizer, options=options)


def load_full_states(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Every rank: shard the full state dicts of :func:`full_states` into the FSDP model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def unsharded(model: torch.nn.Module, fresh: Callable[[], Any], main: bool) -> torch.nn.Module:
    """Collective: on rank 0 a plain model (``fresh()``) holding the trained full weights,
    to evaluate and save like a one-process run; the sharded model elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not main:
        return model
    plain = fresh()
    plain.load_state_dict(state)
    return plain
