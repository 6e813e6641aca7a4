"""The one device, precision and thread policy of every command.

- :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N`` into a ``torch.device`` (``auto``: the
  first GPU if there is one) and fails in one line when CUDA is asked for and absent;
- :func:`bf16_supported` / :func:`autocast_context`: bf16 autocast where the device runs it;
- :func:`training_precision`: the Trainer's ``bf16``/``fp16`` flags from ``--precision``;
- :func:`compute_dtype`: fp32 on CPU, bf16 (else fp16) on a GPU, for frozen/quantized weights;
- :func:`cpu_threads` / :func:`set_threads`: intra-op threads that follow the free cores;
- :func:`inference_dtype`: fp32 on CPU, bf16 (else fp16) on CUDA (probabilities stay fp32);
- :func:`trainable_dtype`: fp32, always, for weights an optimizer updates (a checkpoint saved
  in bf16/fp16 is not fine-tuned in half precision: transformers 5 loads ``dtype="auto"``);
- :func:`local_device_map`: the ``device_map`` of a quantized model: this process's own GPU
  (``LOCAL_RANK`` under torchrun / accelerate), not GPU 0 on every rank;
- :func:`require_cpu`: a one-line error for CPU-only paths (dynamic int8, ONNX) on a GPU;
- :func:`add_device_arg`: the ``--device`` flag every inference command shares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zhtune.errors import ConfigError

log = logging.getLogger("zhtune")

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(spec: Any = "auto") -> Any:
    """``auto`` (first GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> ``torch.device``."""
    import torch

    if isinstance(spec, torch.device):
        return spec
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


def compute_dtype(device: Any = None) -> Any:
    """fp32 on CPU; bf16 (else fp16) on a GPU (``device``, default: any GPU present)."""
    import torch

    if device is not None:
        return inference_dtype(device)

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


LOADAVG = Path("/proc/loadavg")  # field 4: runnable tasks now / all tasks


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable now (Linux), else 1."""
    n = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            n += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
    return max(1, n)


def busy_elsewhere(samples: int = 5, interval: float = 0.02) -> int:
    """Cores other processes keep busy now: the runnable tasks of ``/proc/loadavg`` less this
    process's own, the median of a few samples. Where there is no ``/proc`` (not Linux): the
    1-minute load average.

    Not the load average on Linux: it decays over a minute, so a process that has just
    trained on every core (one quickstart stage) would see itself as "other load" for the
    next stage and halve its own threads."""
    loadavg = LOADAVG
    if not loadavg.is_file():
        try:
            return int(os.getloadavg()[0] + 0.5)
        except (AttributeError, OSError):
            return 0
    seen = []
    for i in range(samples):
        try:
            running = int(loadavg.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        seen.append(max(0, running - _own_running_threads()))
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(seen)[len(seen) // 2]


def cpu_threads() -> int:
    """Intra-op threads: the usable cores less those other processes keep busy now
    (:func:`busy_elsewhere`), at least 1. ``ZHTUNE_THREADS`` overrides.

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
    return max(1, min(cores, cores - busy_elsewhere()))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (default :func:`cpu_threads`); returns it."""
    import torch

    n = n or cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("inference threads: %d", n)
    return n


def inference_dtype(device: Any) -> Any:
    """The weight dtype of inference on ``device``: fp32 on CPU, bf16 (else fp16) on CUDA."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def trainable_dtype() -> Any:
    """fp32: the dtype of every weight an optimizer updates (master weights; mixed precision
    comes from autocast, ``training_precision``). Passed explicitly to ``from_pretrained``,
    which in transformers 5 would otherwise keep a bf16/fp16 checkpoint's dtype."""
    import torch

    return torch.float32


def frozen_dtype(precision: str = "auto") -> Any:
    """The dtype of frozen weights under training (a LoRA base, a frozen-base head run): bf16
    / fp16 on a GPU when the Trainer runs mixed precision there (autocast casts the fp32
    adapters' inputs), else fp32. The trained weights stay fp32 (:func:`trainable_dtype`)."""
    import torch

    if not has_gpu():
        return torch.float32
    flags = training_precision(precision)
    if flags["bf16"]:
        return torch.bfloat16
    if flags["fp16"]:
        return torch.float16
    return torch.float32


def local_rank() -> int:
    """This process's GPU index under torchrun / accelerate (``LOCAL_RANK``), else 0."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        return 0


def local_device_map(device: Any | None = None) -> dict[str, Any] | str:
    """``device_map`` for ``from_pretrained`` of a quantized (bitsandbytes) model: the whole
    model on this rank's GPU (``device`` if it names one, else ``cuda:LOCAL_RANK``), or CPU."""
    import torch

    if device is not None and getattr(device, "type", None) == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    if device is not None and getattr(device, "index", None) is not None:
        return {"": int(device.index)}
    return {"": local_rank()}


def require_cpu(device: Any, what: str) -> None:
    """CPU-only paths (dynamic int8, ONNX Runtime on CPU): a one-line error otherwise."""
    if getattr(device, "type", str(device)) != "cpu":
        raise ConfigError(f"{what} runs on CPU only; use --device cpu (got {device})")


def add_device_arg(parser: Any, note: str = "") -> None:
    """The shared ``--device auto|cpu|cuda|cuda:N`` flag (default ``auto``)."""
    parser.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help=f"{DEVICE_CHOICES}; auto = the first GPU if there is one, else CPU. On CUDA, "
        f"inference runs in bf16 (fp16 where bf16 is unsupported), probabilities in fp32"
        f"{note} (default: auto)",
    )
