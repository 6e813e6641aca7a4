"""The one device, precision and thread policy of every command.

- :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N`` into a ``torch.device`` (``auto``: the
  first GPU if there is one) and fails in one line when CUDA is asked for and absent;
- :func:`bf16_supported` / :func:`autocast_context`: bf16 autocast where the device runs it;
- :func:`training_precision`: the Trainer's ``bf16``/``fp16`` flags from ``--precision``;
- :func:`compute_dtype`: fp32 on CPU, bf16 (else fp16) on a GPU, for frozen/quantized weights;
- :func:`cpu_threads` / :func:`set_threads`: intra-op threads that follow the free cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from zhtune.errors import ConfigError

log = logging.getLogger("zhtune")

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(spec: str | None = "auto") -> Any:
    """``auto`` (first GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> ``torch.device``."""
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine; use cpu")
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return dev
    raise ConfigError(f"--device {spec!r}: allowed values: {DEVICE_CHOICES}")


def bf16_supported(device: Any) -> bool:
    """Whether bf16 autocast runs (and is fast) on ``device``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        fast = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return bool(fast)
    except (RuntimeError, AttributeError):
        return False


def autocast_context(precision: str, device: Any) -> tuple[Callable[[], Any], str]:
    """A factory of autocast contexts (bf16) or of null contexts (fp32), and its name.

    ``precision``: ``auto`` (bf16 where supported), ``bf16`` (warns and falls back to fp32
    where not) or ``fp32``."""
    import torch

    use = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    if precision == "bf16" and not bf16_supported(device):
        log.warning("bf16 is not supported on %s; training in fp32", device)
        use = False
    if use:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    return contextlib.nullcontext, "fp32"


def training_precision(precision: str) -> dict[str, bool]:
    """The HF Trainer's ``bf16``/``fp16`` flags: ``auto`` = bf16 (else fp16) on a GPU, fp32
    on CPU; ``fp16`` needs a GPU."""
    import torch

    gpu = has_gpu()
    p = precision
    if p == "auto":
        if not gpu:
            return {"bf16": False, "fp16": False}
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "fp16" and not gpu:
        raise ConfigError("config field 'precision': fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def compute_dtype() -> Any:
    """fp32 on CPU; bf16 (else fp16) on a GPU."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_threads() -> int:
    """Intra-op threads for inference: the usable cores less those other processes keep busy
    (1-minute load average), at least 1. ``ZHTUNE_THREADS`` overrides.

    Intra-op threads meet at a barrier after every operator; when another process holds one
    of them off its core, the whole batch waits for it. On a busy 2-core machine one thread
    is ~15x faster than two, so the count follows the free cores rather than all cores."""
    env = int(os.environ.get("ZHTUNE_THREADS", "0") or 0)
    if env > 0:
        return env
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cores, cores - busy))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (default :func:`cpu_threads`); returns it."""
    import torch

    n = n or cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("inference threads: %d", n)
    return n
