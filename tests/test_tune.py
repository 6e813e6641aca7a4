"""zhtune tune: search space parsing, pruning, an interrupted search that resumes, best preset."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from conftest import labelled_rows, write_csv
from zhtune import tune
from zhtune.cli import main
from zhtune.errors import ConfigError
from zhtune.finetune.encoder import FinetuneConfig

FIELDS = {f for f in FinetuneConfig.__dataclass_fields__}
SPACE = "learning_rate=1e-3:1e-2:log,batch_size=4|8,dropout=0.0:0.2"


def test_parse_space():
    dims = {d.name: d for d in tune.parse_space(SPACE + ",num_hidden_layers=1:3", FIELDS)}
    lr, bs, dr, layers = (
        dims[k] for k in ("learning_rate", "batch_size", "dropout", "num_hidden_layers")
    )
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-3, 1e-2, True)
    assert (bs.kind, bs.choices) == ("choice", (4, 8))  # YAML scalars: ints stay ints
    assert (dr.kind, dr.log) == ("float", False)
    assert (layers.kind, layers.low, layers.high) == ("int", 1, 3)
    assert tune.parse_space("loss=ce|focal", FIELDS)[0].choices == ("ce", "focal")
    for bad, msg in [
        ("lerning_rate=1e-5:1e-3", "unknown field 'lerning_rate'"),
        ("learning_rate=1e-3:1e-5", "low must be < high"),
        ("learning_rate=0:1e-3:log", "log range needs low > 0"),
        ("learning_rate=1e-5:x", "not a number"),
        ("learning_rate", "name=low:high"),
        ("dropout=0.1:0.2,dropout=0.2:0.3", "given twice"),
        ("", "at least one parameter"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            tune.parse_space(bad, FIELDS)


def test_apply_params_maps_dropout_and_validates():
    base = FinetuneConfig(train="x.csv", model="none")
    cfg = tune.apply_params(base, {"dropout": 0.25, "batch_size": 16, "learning_rate": 1e-4})
    assert (cfg.hidden_dropout, cfg.attention_dropout) == (0.25, 0.25)
    assert (cfg.batch_size, cfg.learning_rate, cfg.train) == (16, 1e-4, "x.csv")
    with pytest.raises(ConfigError, match="hidden_dropout"):
        tune.apply_params(base, {"dropout": 1.5})


class FakeTrial:
    def __init__(self, prune_at: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_at


def test_pruning_callback_reports_and_stops():
    from transformers import TrainerControl, TrainerState

    trial = FakeTrial(prune_at=2)
    cb = tune.pruning_callback(trial, "macro_f1", maximize=True)
    state, control = TrainerState(), TrainerControl()
    cb.on_evaluate(None, state, control, metrics={"eval_macro_f1": 0.6, "eval_loss": 0.7})
    assert not control.should_training_stop
    cb.on_evaluate(None, state, control, metrics={"eval_macro_f1": 0.5})
    assert trial.reports == [(0.6, 1), (0.5, 2)]  # step = evaluation number
    assert control.should_training_stop and cb.pruned_at == 2 and cb.best == 0.6


def test_stale_running_trial_is_failed_and_requeued(tmp_path):
    from optuna.trial import TrialState

    study, storage = tune.open_study(tmp_path, "s", True, 0, 5, "median")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dist = {"learning_rate": __import__("optuna").distributions.FloatDistribution(1e-5, 1)}
    t = study.ask(dist)
    t.set_user_attr("pid", dead.pid)
    t.set_user_attr("host", __import__("socket").gethostname())
    live = study.ask()  # a trial of a live worker (this process) is left alone
    live.set_user_attr("pid", __import__("os").getpid())
    live.set_user_attr("host", __import__("socket").gethostname())
    assert tune.recover_stale_trials(study, storage) == 1
    states = {tr.number: tr.state for tr in study.trials}
    assert states[t.number] == TrialState.FAIL and states[live.number] == TrialState.RUNNING
    again = study.ask(dist)  # the interrupted parameters are tried again next
    assert again.params == t.params


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """2 trials, then the same command with --n-trials 3 (a resumed search)."""
    root = tmp_path_factory.mktemp("tune")
    train = write_csv(root / "train.csv", labelled_rows(2))
    preset = {
        "train": str(train), "model": "none", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_length": 32, "max_steps": 4,
        "eval_every": 2, "warmup_ratio": 0.0, "progress": False, "report_to": "none",
    }  # fmt: skip
    (root / "tiny.yaml").write_text(yaml.safe_dump(preset), encoding="utf-8")
    out = root / "search"
    args = ["tune", "--config", str(root / "tiny.yaml"), "--space", SPACE, "--out", str(out)]
    assert main([*args, "--n-trials", "2"]) == 0
    first = (out / "trials.csv").read_text(encoding="utf-8")
    assert main([*args, "--n-trials", "3"]) == 0
    return root, out, first


def test_search_resumes_and_writes_outputs(search):
    import optuna

    root, out, first = search
    assert len(first.splitlines()) == 1 + 2
    study = optuna.load_study(study_name="zhtune-tune", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(study.trials) == 3 and len(done) == 3  # resumed: one more trial, not three
    with (out / "trials.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {"learning_rate", "batch_size", "dropout", "value", "state", "run_dir"} <= set(rows[0])
    assert "| trial | state | value |" in (out / "trials.md").read_text(encoding="utf-8")
    for r in rows:  # each trial is a finetune run directory, checkpoints removed
        run = out / r["run_dir"]
        assert (run / "zhtune.json").is_file() and not (run / "checkpoints").exists()
        assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] in (4, 8)
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "tune.json").read_text())["direction"] == "maximize"


def test_best_preset_trains(search, capsys):
    root, out, _ = search
    text = (out / "best.yaml").read_text(encoding="utf-8")
    assert text.startswith("# zhtune tune: best of 3 trials")
    best = yaml.safe_load(text)
    assert best["hidden_dropout"] == best["attention_dropout"]
    assert 1e-3 <= best["learning_rate"] <= 1e-2 and best["batch_size"] in (4, 8)
    run = root / "best-run"
    assert main(["finetune", "--config", str(out / "best.yaml"), "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["n"] > 0
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["learning_rate"] == best["learning_rate"]
    )
