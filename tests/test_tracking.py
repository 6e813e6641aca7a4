"""Tracking: TensorBoard events and MLflow runs are really written and readable back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import labelled_rows, write_csv
from zhtune.cli import main
from zhtune.training import tracking

# a randomly initialised tiny RoBERTa (hidden 32, 2 layers): 4 steps, a dev evaluation every 2
TINY = {
    "model": "none",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_length": 32,
    "batch_size": 8,
    "max_steps": 4,
    "eval_every": 2,
    "logging_steps": 1,
    "learning_rate": 3e-3,
    "warmup_ratio": 0.0,
    "progress": False,
}


def flags(d: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in d.items()]


def finetune(root: Path, out: str, **kw) -> Path:
    train = root / "train.csv"
    if not train.is_file():
        write_csv(train, labelled_rows(2))
    rc = main(["finetune", "--train", str(train), "--out", str(root / out), *flags({**TINY, **kw})])
    assert rc == 0
    return root / out


def test_tensorboard_events_written_and_readable(tmp_path):
    run = finetune(tmp_path, "tb", report_to="tensorboard")
    scalars = tracking.event_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]  # logging_steps 1
    assert [s for s, _ in scalars["eval/macro_f1"]] == [2, 4]  # one per dev evaluation
    assert all(0 <= v <= 1 for _, v in scalars["eval/accuracy"])
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert not (run / "mlruns").exists()
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert status["status"] == "finished" and status["world_size"] == 1


def test_mlflow_params_metrics_figures(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="--report-to mlflow needs `pip install mlflow`")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run = finetune(tmp_path, "ml", report_to="mlflow")
    assert not (run / "tensorboard").exists()
    assert (run / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=tracking.mlflow_uri(run))  # a fresh reader of the store
    exp = client.get_experiment_by_name("zhtune")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.info.run_id == json.loads((run / "status.json").read_text())["mlflow_run_id"]
    assert float(r.data.params["learning_rate"]) == pytest.approx(3e-3)
    assert r.data.params["effective_batch_size"] == "8"
    dev = client.get_metric_history(r.info.run_id, "eval_macro_f1")
    assert sorted(m.step for m in dev) == [2, 4]  # metrics per evaluation
    assert len(client.get_metric_history(r.info.run_id, "loss")) == 4
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert r.data.metrics["final_accuracy"] == pytest.approx(metrics["accuracy"])
    figures = {Path(a.path).name for a in client.list_artifacts(r.info.run_id, "figures")}
    assert {"training_curves.png", "confusion_matrix.png", "per_class.png"} <= figures
    local = Path(client.download_artifacts(r.info.run_id, "figures/confusion_matrix.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"metrics.json", "config.yaml"}


def test_pretrain_writes_tensorboard_events(tmp_path):
    from test_pretrain import make_texts, tiny
    from zhtune.pretrain.loop import run_pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_texts(30)) + "\n", encoding="utf-8")
    out = tmp_path / "pt"
    run_pretrain(tiny(corpus, max_steps=3, save_steps=0), out)
    scalars = tracking.event_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert "train/learning_rate" in scalars
    assert json.loads((out / "status.json").read_text())["status"] == "finished"


def test_report_to_choices_and_single_process_guard(monkeypatch, tmp_path):
    from zhtune.errors import ConfigError, ZhtuneError
    from zhtune.finetune.encoder import FinetuneConfig
    from zhtune.training.trainer import build_training_args

    with pytest.raises(ConfigError, match="report_to"):
        FinetuneConfig(train="x.csv", model="none", report_to="wandb")
    with pytest.raises(ConfigError, match="deepspeed"):
        FinetuneConfig(train="x.csv", model="none", deepspeed="missing.json")
    fsdp = Path(__file__).parents[1] / "configs" / "distributed" / "fsdp.json"
    cfg = FinetuneConfig(train="x.csv", model="none", fsdp_config=str(fsdp))
    with pytest.raises(ConfigError, match="need GPUs"):  # not silently dropped to DDP on CPU
        build_training_args(cfg, tmp_path, 100)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert tracking.world_size() == 2 and not tracking.is_main_process()
    with pytest.raises(ZhtuneError, match="one process"):
        tracking.require_single_process("zhtune pretrain")
    assert tracking.write_status(Path("/nonexistent"), "running") == {}  # rank 1 writes nothing
