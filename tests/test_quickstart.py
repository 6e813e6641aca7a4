"""zhtune quickstart, run tiny: every stage, the summary table and the reports."""

from __future__ import annotations

import json

import pytest

from zhtune.cli import main
from zhtune.errors import ConfigError
from zhtune.quickstart import QuickstartConfig

TINY = {
    "max_train_samples": 240,
    "max_eval_samples": 60,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "pretrain_max_steps": 6,
    "pretrain_batch_size": 8,
    "pretrain_seq_length": 32,
    "finetune_max_steps": 6,
    "eval_every": 3,
    "max_length": 32,
    "batch_size": 16,
    "progress": False,
    "llm_pretrain_max_steps": 3,
    "llm_train_samples": 16,
}


@pytest.mark.slow
def test_tiny_quickstart_every_stage(tmp_path):
    out = tmp_path / "qs"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["quickstart", "--out", str(out), *flags]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    runs = [r["run"] for r in summary["rows"]]
    assert runs == [
        "baseline",
        "finetune",
        "scratch",
        "llm/lora-head",
        "llm/lora-scoring",
        "llm/zero-shot",
    ]
    for r in summary["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["n"] == 60
        trained = r["run"] != "llm/zero-shot"  # zero-shot has no training
        assert (r["train_seconds"] > 0) == trained
        assert (r["model_bytes"] > 0) == trained  # zero-shot saves no weights of its own
        assert r["texts_per_second"] > 0
    assert summary["rows"][1]["pretrain_seconds"] > 0
    assert "from scratch" in summary["rows"][2]["model"]
    # pretraining saw the training split only: no dev/test text
    corpus = (out / "pretrain" / "corpus-train-split.txt").read_text(encoding="utf-8")
    assert len(corpus.splitlines()) <= 240
    for name in ("summary.md", "report.html", "compare/report.html"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text(encoding="utf-8")
    for fig in (
        "finetune/training_curves.png",
        "scratch/confusion_matrix.png",
        "baseline/per_class.png",
    ):
        assert fig in html and (out / fig).is_file()
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "fine-tuned from scratch" in md and "TF-IDF" in md
    assert "Best fine-tuned model" in md and "TF-IDF baseline" in html


def test_quickstart_stage_switches_and_errors(tmp_path):
    out = tmp_path / "qs"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    rc = main(
        [
            "quickstart",
            "--out",
            str(out),
            *flags,
            "--skip-pretrain=true",
            "--skip-scratch=true",
            "--skip-compare=true",
            "--skip-llm=true",
        ]  # fmt: skip
    )
    assert rc == 0
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"]
    assert [r["run"] for r in rows] == ["baseline"]
    with pytest.raises(ConfigError, match="pretrain_extra"):
        QuickstartConfig(dataset="inews", pretrain_extra=["inews"])
