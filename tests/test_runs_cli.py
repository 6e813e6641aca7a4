"""zhtune runs ls: kind, dataset, metrics and status (finished / failed / interrupted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import labelled_rows, write_csv
from zhtune.cli import main
from zhtune.runs import write_json
from zhtune.training import runs_cli, tracking


def fake_run(d: Path, kind: str | None, status: dict | None, ckpt: bool = False) -> Path:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        "_config_class: FinetuneConfig\ntrain: data/reviews.csv\n", encoding="utf-8"
    )
    (d / "history.jsonl").write_text(
        json.dumps({"kind": "eval", "step": 40, "eval_macro_f1": 0.75}) + "\n", encoding="utf-8"
    )
    if kind:
        write_json(d / "zhtune.json", {"kind": kind, "labels": ["a", "b"]})
        write_json(d / "metrics.json", {"accuracy": 0.9, "macro_f1": 0.875, "train_seconds": 75})
    if status:
        write_json(d / "status.json", status)
    if ckpt:
        (d / "checkpoints" / "checkpoint-40").mkdir(parents=True)
        (d / "checkpoints" / "checkpoint-40" / "trainer_state.json").write_text("{}")
    return d


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_status_rules(tmp_path):
    me = {"pid": __import__("os").getpid(), "host": __import__("socket").gethostname()}
    gone = {"pid": dead_pid(), "host": me["host"]}
    cases = {
        "done": fake_run(tmp_path / "done", "encoder", {"status": "finished"}),
        "legacy": fake_run(tmp_path / "legacy", "baseline", None),
        "broke": fake_run(tmp_path / "broke", None, {"status": "failed", "error": "OOM"}),
        "ctrl-c": fake_run(tmp_path / "ctrl-c", None, {"status": "interrupted"}, ckpt=True),
        "killed": fake_run(tmp_path / "killed", None, {"status": "running", **gone}, ckpt=True),
        "died": fake_run(tmp_path / "died", None, {"status": "running", **gone}),
        "live": fake_run(tmp_path / "live", None, {"status": "running", **me}),
        "trained": fake_run(  # a command that does not call finish_run: files decide
            tmp_path / "sweep" / "trials" / "t0",
            "encoder",
            {"status": "trained", "started": "2000-01-01T00:00:00+00:00", **gone},
        ),
    }
    got = {name: runs_cli.run_status(d) for name, d in cases.items()}
    assert got["done"] == ("finished", "")
    assert got["legacy"] == ("finished", "")
    assert got["broke"] == ("failed", "OOM")
    assert got["ctrl-c"] == ("interrupted", "resumable")
    assert got["killed"] == ("interrupted", "resumable (process ended)")
    assert got["died"][0] == "failed"
    assert got["live"][0] == "running"
    assert got["trained"] == ("finished", "")
    found = runs_cli.find_runs(tmp_path)
    assert {p.name for p in found} == {*cases} - {"trained"} | {"t0"}  # nested runs found too


def test_cli_table_and_json(tmp_path, capsys):
    fake_run(tmp_path / "a", "encoder", {"status": "finished", "world_size": 2})
    fake_run(tmp_path / "b", None, {"status": "interrupted"}, ckpt=True)
    assert main(["runs", "ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ")}
    assert "encoder x2" in lines["a"] and "reviews.csv" in lines["a"]
    assert "acc 0.9 F1 0.875" in lines["a"] and "1m15s" in lines["a"] and "finished" in lines["a"]
    assert "dev F1 0.75 (step 40)" in lines["b"] and "interrupted (resumable)" in lines["b"]
    assert "can resume" in out
    assert main(["runs", "ls", str(tmp_path), "--json"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["state"]) for r in recs] == [("a", "finished"), ("b", "interrupted")]
    assert main(["runs", "ls", str(tmp_path / "missing")]) == 2


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """Real finetune runs stopped by an exception (step 1) and by Ctrl-C (after a checkpoint)."""
    from transformers import TrainerCallback

    from zhtune.finetune.encoder import FinetuneConfig, run_finetune

    root = tmp_path_factory.mktemp("stopped")
    train = write_csv(root / "train.csv", labelled_rows(2))

    class Stop(TrainerCallback):
        def __init__(self, exc: BaseException, at: int) -> None:
            self.exc, self.at = exc, at

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= self.at:
                raise self.exc

    cfg = FinetuneConfig(
        train=str(train), model="none", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_length=32, batch_size=8,
        max_steps=6, eval_every=2, progress=False, report_to="none",
    )  # fmt: skip
    for name, exc, at in (
        ("failed", RuntimeError("disk full"), 1),
        ("ctrl-c", KeyboardInterrupt(), 3),
    ):
        with tracking.extra_callbacks(Stop(exc, at)), pytest.raises(type(exc)):
            run_finetune(cfg, root / name)
    return root


def test_real_failed_and_interrupted_runs(stopped_runs):
    failed = runs_cli.describe(stopped_runs / "failed", stopped_runs)
    assert failed["state"] == "failed" and "RuntimeError: disk full" in failed["detail"]
    stopped = runs_cli.describe(stopped_runs / "ctrl-c", stopped_runs)
    assert (stopped["state"], stopped["detail"]) == ("interrupted", "resumable")  # checkpoint-2
    assert stopped["kind"] == "finetune" and "dev F1" in stopped["metrics"]
    # report_to none: no tracking files at all
    assert not any((stopped_runs / "ctrl-c" / d).exists() for d in ("tensorboard", "mlruns"))
