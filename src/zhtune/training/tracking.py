"""Experiment tracking, run status and multi-process helpers shared by the training commands.

API
---
``rank()`` / ``world_size()`` / ``is_main_process()``
    The process's place in a ``torchrun`` / ``accelerate launch`` job (from ``RANK`` /
    ``WORLD_SIZE``, or torch.distributed once initialised). Only the main process writes
    run files (``zhtune.json``, metrics, predictions, figures, logs).
``write_status(out, status, **fields)`` / ``read_status(out)``
    ``status.json`` in the run directory: ``running`` (with pid and host), ``trained``,
    ``finished``, ``failed`` (with the error) or ``interrupted``; ``zhtune runs ls`` reads it.
``training_status(out, cfg)``
    Context manager around training: ``running`` on entry, ``trained`` on success,
    ``interrupted`` on Ctrl-C, ``failed`` on an exception (then re-raised).
``trainer_callbacks(cfg, out)``
    The Trainer callbacks for ``cfg.report_to``: TensorBoard (``out/tensorboard``), MLflow
    (``out/mlruns``) or none, on the main process only, plus any registered with
    ``extra_callbacks(...)`` (``zhtune tune`` adds its pruning callback that way).
``start_logging(report_to, out, params)``
    The same backends for a custom loop (``zhtune pretrain``): ``.log(row, step)``, ``.close()``.
``finish_run(out, metrics)``
    At the very end of a command: status ``finished``; with MLflow, the test metrics and every
    figure (``*.png``), ``metrics.json`` and ``config.yaml`` are logged to the run.

MLflow stores runs in ``MLFLOW_TRACKING_URI`` when set, otherwise in a local SQLite store
``out/mlruns/mlflow.db`` with artifacts in ``out/mlruns/artifacts`` (MLflow 3 refuses the
plain file store unless ``MLFLOW_ALLOW_FILE_STORE=true``). The experiment is
``MLFLOW_EXPERIMENT_NAME`` or ``zhtune``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zhtune.errors import ZhtuneError

log = logging.getLogger("zhtune")

STATUS_FILE = "status.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
REPORT_TO = ("tensorboard", "mlflow", "none")
_EXTRA: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "zhtune_extra_callbacks", default=()
)


# --- processes ---------------------------------------------------------------------------
def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun / accelerate)."""
    d = _dist()
    return d.get_rank() if d else int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    return rank() == 0


def require_single_process(command: str) -> None:
    """Fail clearly when a command without multi-process support is launched N times."""
    if world_size() > 1:
        raise ZhtuneError(
            f"{command} runs in one process only (WORLD_SIZE={world_size()}); launch it with "
            "python/zhtune instead of torchrun/accelerate (see docs/scaling.md)"
        )


# --- status.json -------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def read_status(out: str | Path) -> dict:
    p = Path(out) / STATUS_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(out: str | Path, status: str | None, **fields: Any) -> dict:
    """Merge ``status`` (None: unchanged) and ``fields`` into ``out/status.json``.

    Main process only; ``running`` also records the pid, host, start time and world size."""
    if not is_main_process():
        return {}
    from zhtune.runs import write_json

    data = read_status(out)
    data.update(fields, updated=_now())
    if status is not None:
        data["status"] = status
    if status == "running":
        data.update(pid=os.getpid(), host=socket.gethostname(), started=data["updated"])
        data.update(world_size=world_size())
        for k in ("error", "ended"):
            data.pop(k, None)
    elif status in ("finished", "failed", "interrupted"):
        data["ended"] = data["updated"]
    write_json(Path(out) / STATUS_FILE, data)
    return data


@contextlib.contextmanager
def training_status(out: str | Path, cfg: Any = None) -> Iterator[None]:
    """``running`` -> ``trained`` / ``interrupted`` (Ctrl-C) / ``failed`` (exception, re-raised)."""
    fields = {"config_class": type(cfg).__name__} if cfg is not None else {}
    write_status(out, "running", **fields)
    try:
        yield
    except KeyboardInterrupt:
        write_status(out, "interrupted")
        _terminate_mlflow(out, "KILLED")
        raise
    except BaseException as e:
        write_status(out, "failed", error=f"{type(e).__name__}: {e}"[:500])
        _terminate_mlflow(out, "FAILED")
        raise
    write_status(out, "trained")


def finish_run(out: str | Path, metrics: dict | None = None) -> None:
    """Mark the run finished; with MLflow, log the final metrics and artifacts to its run."""
    if not is_main_process():
        return
    out = Path(out)
    run_id = read_status(out).get("mlflow_run_id")
    if run_id:
        try:
            _MLflow.resume(out, run_id).finish(out, metrics or {})
        except Exception as e:  # tracking must never lose a finished model
            log.warning("could not log the final results to MLflow: %s", e)
    write_status(out, "finished")


# --- MLflow ------------------------------------------------------------------------------
def mlflow_uri(out: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` or the local SQLite store ``out/mlruns/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    d = (Path(out) / MLFLOW_DIR).resolve()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


_BAD_KEY = re.compile(r"[^\w\-. :/]")


def _metric_items(values: dict, prefix: str = "") -> dict[str, float]:
    import math

    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        out[_BAD_KEY.sub("_", f"{prefix}{k}")] = float(v)
    return out


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[_BAD_KEY.sub("_", f"{prefix}{k}")] = str(v)[:5000]
    return out


class _MLflow:
    """One MLflow run written through ``MlflowClient`` (no global active-run state)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, out: Path, params: dict, resume: bool) -> _MLflow:
        """Continue the run recorded in status.json when resuming, else create one."""
        from mlflow.tracking import MlflowClient

        uri = mlflow_uri(out)
        client = MlflowClient(tracking_uri=uri)
        old = read_status(out).get("mlflow_run_id") if resume else None
        if old:
            try:
                client.update_run(old, status="RUNNING")
                return cls(client, old)
            except Exception:  # deleted run, other store: start a new one
                pass
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "zhtune")
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            art = None
            if uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
                art = (Path(out) / MLFLOW_DIR / "artifacts").resolve().as_uri()
            exp_id = client.create_experiment(name, artifact_location=art)
        run = client.create_run(
            exp_id, run_name=Path(out).resolve().name, tags={"zhtune.out": str(out)}
        )
        self = cls(client, run.info.run_id)
        self.log_params(params)
        write_status(out, None, mlflow_run_id=self.run_id)
        log.info("MLflow run %s in %s", self.run_id, uri)
        return self

    @classmethod
    def resume(cls, out: Path, run_id: str) -> _MLflow:
        from mlflow.tracking import MlflowClient

        return cls(MlflowClient(tracking_uri=mlflow_uri(out)), run_id)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _flat(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, values: dict, step: int, prefix: str = "") -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, int(step)) for k, v in _metric_items(values, prefix).items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def finish(self, out: Path, metrics: dict) -> None:
        """Final (test) metrics, figures as artifacts, run status FINISHED."""
        final = {k if k.startswith("final_") else f"final_{k}": v for k, v in metrics.items()}
        self.log_metrics(final, 0)
        for png in sorted(out.glob("*.png")):
            self.client.log_artifact(self.run_id, str(png), "figures")
        for name in ("metrics.json", "config.yaml", "zhtune.json"):
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))
        self.client.set_terminated(self.run_id, "FINISHED")


def _terminate_mlflow(out: str | Path, status: str) -> None:
    run_id = read_status(out).get("mlflow_run_id") if is_main_process() else None
    if run_id:
        try:
            _MLflow.resume(Path(out), run_id).client.set_terminated(run_id, status)
        except Exception as e:
            log.warning("could not mark the MLflow run %s: %s", status, e)


# --- Trainer callbacks -------------------------------------------------------------------
def _run_params(cfg: Any) -> dict:
    from zhtune.config import to_dict

    params = to_dict(cfg)
    per_device = getattr(cfg, "batch_size", None)
    accum = getattr(cfg, "gradient_accumulation_steps", 1)
    params["world_size"] = world_size()
    if per_device:
        params["effective_batch_size"] = per_device * accum * world_size()
    return params


def _mlflow_callback(out: Path, cfg: Any):
    from transformers import TrainerCallback

    class MLflowCallback(TrainerCallback):
        """Params at the start, every log (train loss, lr, dev metrics) as metrics."""

        def __init__(self) -> None:
            self.run: _MLflow | None = None

        def on_train_begin(self, args, state, control, **kw):
            self.run = _MLflow.start(out, _run_params(cfg), resume=state.global_step > 0)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.run is not None:
                self.run.log_metrics(dict(logs or {}), state.global_step)

        def on_train_end(self, args, state, control, **kw):
            if self.run is not None:  # finish_run() adds the test metrics and the figures
                self.run.client.set_terminated(self.run.run_id, "FINISHED")

    return MLflowCallback()


def _process_callback():
    from transformers import TrainerCallback

    class ProcessInfoCallback(TrainerCallback):
        """One log line per process at the start and end of multi-process training."""

        def on_train_begin(self, args, state, control, **kw):
            if world_size() > 1:
                import torch.distributed as dist

                backend = dist.get_backend() if dist.is_initialized() else "none"
                log.info(
                    "rank %d/%d (%s): per-device batch %d, effective batch %d",
                    rank(), world_size(), backend, args.per_device_train_batch_size,
                    args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size(),
                )  # fmt: skip

        def on_train_end(self, args, state, control, **kw):
            if world_size() > 1:
                log.info("rank %d/%d trained %d steps", rank(), world_size(), state.global_step)

    return ProcessInfoCallback()


def trainer_callbacks(cfg: Any, out: str | Path) -> list[Any]:
    """Reporting callbacks for ``cfg.report_to`` (main process) + ``extra_callbacks``."""
    from transformers.integrations import TensorBoardCallback

    out = Path(out)
    cbs: list[Any] = [_process_callback()]
    report = getattr(cfg, "report_to", "none")
    if is_main_process() and report == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        cbs.append(TensorBoardCallback(SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))))
    elif is_main_process() and report == "mlflow":
        cbs.append(_mlflow_callback(out, cfg))
    return [*cbs, *_EXTRA.get()]


@contextlib.contextmanager
def extra_callbacks(*callbacks: Any) -> Iterator[None]:
    """Add Trainer callbacks to every ``run_trainer`` call made inside the block."""
    token = _EXTRA.set((*_EXTRA.get(), *callbacks))
    try:
        yield
    finally:
        _EXTRA.reset(token)


# --- custom training loops ---------------------------------------------------------------
class StepLogger:
    """TensorBoard / MLflow logging for a hand-written loop; a no-op off the main process."""

    def __init__(self, report_to: str, out: str | Path, params: dict) -> None:
        self.out = Path(out)
        self.tb = None
        self.mlflow: _MLflow | None = None
        if not is_main_process():
            return
        write_status(self.out, "running")
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out / TENSORBOARD_DIR))
        elif report_to == "mlflow":
            resume = any((self.out / "checkpoints").glob("*/trainer_state.json"))
            self.mlflow = _MLflow.start(self.out, params, resume=resume)

    def log(self, row: dict, step: int) -> None:
        values = _metric_items({k: v for k, v in row.items() if k != "step"})
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def start_logging(report_to: str, out: str | Path, params: dict) -> StepLogger:
    return StepLogger(report_to, out, params)


def event_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``logdir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    dirs = sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")})
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found


def is_alive(pid: int | None, host: str | None) -> bool | None:
    """Whether ``pid`` runs on this host (None when it ran on another host)."""
    if not pid:
        return False
    if host and host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__: Sequence[str] = (
    "REPORT_TO", "STATUS_FILE", "StepLogger", "event_scalars", "extra_callbacks", "finish_run",
    "is_alive", "is_main_process", "mlflow_uri", "rank", "read_status", "require_single_process",
    "start_logging", "trainer_callbacks", "training_status", "world_size", "write_status",
)  # fmt: skip
