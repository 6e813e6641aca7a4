"""``zhtune tune``: hyperparameter search for ``zhtune finetune`` with Optuna.

    zhtune tune --config configs/finetune-tiny.yaml --n-trials 20 \\
        --space learning_rate=1e-5:1e-3:log,batch_size=16|32,dropout=0.1:0.3 --out runs/tune

Each trial is one ``zhtune finetune`` run in ``OUT/trials/trial-NNN`` with the sampled
values; the objective is the best dev value of the config's ``metric_for_best`` (never the
test split). Sampler: TPE (seeded by ``seed``). Pruner: median, fed the dev metric at every
evaluation by a Trainer callback, which stops a trial that falls below the median of the
earlier trials at the same evaluation. The study lives in ``OUT/study.db`` (SQLite): run the
same command again to resume an interrupted search; ``--n-trials`` is the total wanted.

Outputs, refreshed after every trial: ``best.yaml`` (a preset for
``zhtune finetune --config best.yaml``), ``trials.csv`` / ``trials.md``,
``optimization_history.png`` and ``param_importances.png``.

Space syntax (comma-separated): ``name=low:high`` (uniform; integers if both are), add
``:log`` for log-uniform, ``name=a|b|c`` for a choice. Names are finetune config fields;
``dropout`` sets both ``hidden_dropout`` and ``attention_dropout``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from zhtune.config import (
    add_config_args,
    config_from_args,
    field_types,
    load_config,
    save_config,
    to_dict,
)
from zhtune.errors import ConfigError, ZhtuneError

log = logging.getLogger("zhtune")

ALIASES = {"dropout": ("hidden_dropout", "attention_dropout")}
STUDY_DB = "study.db"
TRIALS_DIR = "trials"


# --- search space ------------------------------------------------------------------------
@dataclass
class Dim:
    """One searched parameter: a float/int range (optionally log) or a list of choices."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _is_int(s: str) -> bool:
    return s.strip().lstrip("+-").isdigit()


def parse_space(spec: str, fields: set[str]) -> list[Dim]:
    """``learning_rate=1e-5:1e-3:log,batch_size=16|32,dropout=0.1:0.3`` -> dimensions."""
    dims: list[Dim] = []
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip().replace("-", "_"), value.strip()
        where = f"--space {part!r}"
        if not sep or not name or not value:
            raise ConfigError(f"{where}: write name=low:high[:log] or name=a|b|c")
        if name not in fields and name not in ALIASES:
            known = ", ".join(sorted(fields | set(ALIASES)))
            raise ConfigError(f"{where}: unknown field {name!r}; finetune fields: {known}")
        if any(d.name == name for d in dims):
            raise ConfigError(f"{where}: {name} is given twice")
        if "|" in value or ":" not in value:
            choices = tuple(yaml.safe_load(v.strip()) for v in value.split("|") if v.strip())
            if not choices:
                raise ConfigError(f"{where}: no choices")
            dims.append(Dim(name, "choice", choices=choices))
            continue
        bits = [b.strip() for b in value.split(":")]
        log_scale = len(bits) == 3 and bits[2].lower() == "log"
        if len(bits) not in (2, 3) or (len(bits) == 3 and not log_scale):
            raise ConfigError(f"{where}: a range is low:high or low:high:log")
        try:
            low, high = float(bits[0]), float(bits[1])
        except ValueError:
            raise ConfigError(f"{where}: {bits[0]!r} or {bits[1]!r} is not a number") from None
        if not low < high:
            raise ConfigError(f"{where}: low must be < high")
        if log_scale and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0")
        kind = "int" if _is_int(bits[0]) and _is_int(bits[1]) else "float"
        dims.append(Dim(name, kind, low, high, log_scale))
    if not dims:
        raise ConfigError("--space: give at least one parameter, e.g. learning_rate=1e-5:1e-3:log")
    return dims


def apply_params(base: Any, params: dict[str, Any]) -> Any:
    """``base`` with ``params`` set (aliases expanded, types converted, config re-validated)."""
    values = to_dict(base)
    for name, value in params.items():
        for field in ALIASES.get(name, (name,)):
            values[field] = value
    return load_config(type(base), None, **values)


# --- Optuna pieces -----------------------------------------------------------------------
def pruning_callback(trial: Any, metric: str, maximize: bool):
    """A Trainer callback: report the dev metric at each evaluation; stop when pruned."""
    from transformers import TrainerCallback

    class OptunaPruningCallback(TrainerCallback):
        def __init__(self) -> None:
            self.best: float | None = None
            self.evals = 0
            self.pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or not state.is_world_process_zero:
                return
            self.evals += 1
            better = self.best is None or (value > self.best if maximize else value < self.best)
            self.best = float(value) if better else self.best
            trial.report(float(value), self.evals)  # step = evaluation number (same data share)
            if trial.should_prune():
                self.pruned_at = self.evals
                control.should_training_stop = True

    return OptunaPruningCallback()


def recover_stale_trials(study: Any, storage: Any) -> int:
    """Trials left RUNNING by a killed search on this host: mark them FAIL, queue their
    parameters again. Running trials of live processes (parallel workers) are left alone."""
    from optuna.trial import TrialState

    from zhtune.training.tracking import is_alive

    n = 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host != socket.gethostname() or is_alive(pid, host):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        log.info("trial %d was interrupted: marked failed and queued again", t.number)
        n += 1
    return n


def open_study(out: Path, name: str, maximize: bool, seed: int, startup: int, pruner: str):
    """(study, storage): the SQLite study in ``out/study.db``, created or loaded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction: Literal["maximize", "minimize"] = "maximize" if maximize else "minimize"
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_DB).resolve()}")
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        pruner=(
            optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=1)
            if pruner == "median"
            else optuna.pruners.NopPruner()
        ),
    )
    if study.direction.name.lower() != direction:
        raise ZhtuneError(
            f"{out / STUDY_DB}: the study {name!r} was created to {study.direction.name.lower()} "
            f"its metric; use another --out or --study-name for a {direction} search"
        )
    return study, storage


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# --- outputs -----------------------------------------------------------------------------
def write_best_preset(study: Any, base: Any, metric: str, path: Path) -> Path | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    cfg = apply_params(base, best.params)
    head = (
        f"# zhtune tune: best of {len(finished_trials(study))} trials: trial {best.number}, "
        f"dev {metric} = {best.value:.4f}\n"
        f"# parameters searched: {', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
        f"#   zhtune finetune --config {path.name} --out runs/best\n"
    )
    body = yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)
    path.write_text(head + body, encoding="utf-8")
    return path


def trial_rows(study: Any) -> tuple[list[dict], list[str]]:
    names = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        secs = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value}
        row.update({n: t.params.get(n) for n in names})
        row.update(
            evaluations=len(t.intermediate_values),
            test_macro_f1=t.user_attrs.get("test_macro_f1"),
            seconds=round(secs, 1) if secs is not None else None,
            run_dir=t.user_attrs.get("run_dir", ""),
        )
        rows.append(row)
    return rows, names


def write_trials_tables(study: Any, out: Path) -> None:
    from zhtune.evaluation.metrics import format_table

    rows, _ = trial_rows(study)
    if not rows:
        return
    cols = list(rows[0])
    with (out / "trials.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    short = [{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    (out / "trials.md").write_text(
        format_table(short, [(c, c) for c in cols if c != "run_dir"]) + "\n", encoding="utf-8"
    )


def write_plots(study: Any, out: Path) -> list[Path]:
    """Optimization history and parameter importances (optuna's matplotlib figures)."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from zhtune.plots import cjk_font

    cjk_font()
    written = []
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    jobs: list[tuple[str, Any, int]] = [
        ("optimization_history.png", ovm.plot_optimization_history, 1)
    ]
    jobs.append(("param_importances.png", ovm.plot_param_importances, 2))
    for name, plot, need in jobs:
        if len(complete) < need:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks these plots experimental
                ax = plot(study)
            fig: Any = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(out / name)
        except (ValueError, RuntimeError) as e:  # e.g. importances of a constant parameter
            log.warning("%s not written: %s", name, e)
    return written


# --- the search --------------------------------------------------------------------------
def run_tune(
    base: Any,
    space: str,
    n_trials: int,
    out: str | Path,
    *,
    study_name: str = "zhtune-tune",
    startup_trials: int = 5,
    pruner: str = "median",
    timeout: float | None = None,
    keep_checkpoints: bool = False,
) -> Any:
    """Run (or resume) the search until ``n_trials`` trials are complete or pruned."""
    import optuna

    from zhtune.runs import prepare_out_dir, write_json
    from zhtune.training.tracking import extra_callbacks

    out = prepare_out_dir(out)
    dims = parse_space(space, set(field_types(type(base))))
    metric = base.metric_for_best
    maximize = metric != "loss"
    save_config(base, out)
    study, storage = open_study(out, study_name, maximize, base.seed, startup_trials, pruner)
    old_space = study.user_attrs.get("space")
    if old_space and old_space != space:
        log.warning("resuming a study searched with --space %s (now %s)", old_space, space)
    study.set_user_attr("space", space)
    write_json(out / "tune.json", {"space": space, "n_trials": n_trials, "metric": metric,
                                   "direction": "maximize" if maximize else "minimize",
                                   "study": study_name, "storage": STUDY_DB})  # fmt: skip
    recover_stale_trials(study, storage)
    done = len(finished_trials(study))
    todo = max(0, n_trials - done)
    log.info("tune: %d trials done, %d to run; dev %s (%s)", done, todo, metric,
             "maximize" if maximize else "minimize")  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        params = {d.name: d.suggest(trial) for d in dims}
        cfg = apply_params(base, params)  # a ConfigError fails the trial (caught below)
        run_dir = out / TRIALS_DIR / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
        log.info("trial %d: %s", trial.number, params)
        cb = pruning_callback(trial, metric, maximize)
        with extra_callbacks(cb):
            metrics = run_trial(trial.number, cfg, run_dir)
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if isinstance(metrics.get("macro_f1"), float):
            trial.set_user_attr("test_macro_f1", metrics["macro_f1"])
        if cb.best is None:
            raise ZhtuneError(f"trial {trial.number}: no dev evaluation reported eval_{metric}")
        if cb.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at evaluation {cb.pruned_at}")
        return cb.best

    def after_trial(study: optuna.Study, trial: Any) -> None:
        write_outputs(study, base, metric, out)
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        log.info("trial %d %s: dev %s %s", trial.number, trial.state.name.lower(), metric, value)

    if todo:  # MaxTrialsCallback: workers sharing the study stop at n_trials in total
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(
            objective,
            n_trials=todo,
            timeout=timeout,
            callbacks=[after_trial, optuna.study.MaxTrialsCallback(n_trials, states=states)],
            catch=(ZhtuneError,),
            gc_after_trial=True,
        )
    write_outputs(study, base, metric, out)
    return study


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def release_memory() -> None:
    """Free what a failed trial left on the GPU (its tensors are garbage once it unwinds)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_trial(number: int, cfg: Any, run_dir: Path) -> dict:
    """One ``finetune`` run; an out-of-memory error fails this trial only (a ZhtuneError,
    which the study catches), after its memory is released."""
    from zhtune.finetune.encoder import run_finetune

    try:
        return run_finetune(cfg, run_dir)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        err = ZhtuneError(f"trial {number}: out of memory ({msg}); try a smaller batch_size")
    finally:
        release_memory()
    raise err


def write_outputs(study: Any, base: Any, metric: str, out: Path) -> None:
    write_trials_tables(study, out)
    write_best_preset(study, base, metric, out / "best.yaml")
    write_plots(study, out)


# --- CLI ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zhtune.finetune.encoder import FinetuneConfig

    parser.add_argument("--out", required=True, help="search directory (study.db, trials/, ...)")
    parser.add_argument(
        "--space",
        required=True,
        help="e.g. learning_rate=1e-5:1e-3:log,batch_size=16|32,dropout=0.1:0.3",
    )
    parser.add_argument("--n-trials", type=int, default=20, help="trials wanted in total")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--study-name", default="zhtune-tune", help="study name in study.db")
    parser.add_argument(
        "--startup-trials",
        type=int,
        default=5,
        help="random trials before TPE takes over; also before the pruner acts (default: 5)",
    )
    parser.add_argument("--pruner", default="median", choices=["median", "none"])
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="keep every trial's checkpoints/"
    )
    add_config_args(parser, FinetuneConfig)


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.evaluation.metrics import format_table
    from zhtune.finetune.encoder import FinetuneConfig

    if ns.n_trials < 1:
        raise ZhtuneError(f"--n-trials must be >= 1, got {ns.n_trials}")
    base = config_from_args(FinetuneConfig, ns)
    t = time.perf_counter()
    study = run_tune(
        base,
        ns.space,
        ns.n_trials,
        ns.out,
        study_name=ns.study_name,
        startup_trials=ns.startup_trials,
        pruner=ns.pruner,
        timeout=ns.timeout,
        keep_checkpoints=ns.keep_checkpoints,
    )
    rows, names = trial_rows(study)
    cols = [("trial", "trial"), ("state", "state"), ("value", f"dev {base.metric_for_best}")]
    print(format_table(rows, cols + [(n, n) for n in names] + [("seconds", "s")]))
    out = Path(ns.out)
    if (out / "best.yaml").is_file():
        print(
            f"\nbest: trial {study.best_trial.number}, {study.best_value:.4f}; preset {out / 'best.yaml'}"
        )
    print(f"search directory: {out} ({time.perf_counter() - t:.0f} s)")
    return 0
