"""zhtune finetune under ``torchrun --nproc_per_node 2`` on CPU (gloo DDP).

One single-process run (batch 8) is compared with a 2-process run (batch 4 per process, the
same effective batch 8) that is stopped at step 8 and resumed from its checkpoint to step 16.
With dropout off, a constant learning rate and the same seed, both runs see the same
examples in the same optimizer steps (the Trainer's seeded sampler draws one permutation;
accelerate hands consecutive per-device batches to rank 0 and rank 1), start from the same
weights and average the same gradients. The only difference is floating-point summation
order (gloo averages two half-batch means instead of one mean over 8 rows): ~1e-7 relative
per step, so after 16 Adam steps losses and probabilities agree to far better than the
1e-4 tolerance used here, and the predicted labels are identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CPU_ONLY_ENV, labelled_rows, write_csv
from zhtune.cli import main
from zhtune.text import load_tokenizer
from zhtune.training.trainer import read_history

TOL = 1e-4
COMMON = {
    "max_length": 32,
    "group_by_length": "false",
    "learning_rate": 3e-3,
    "lr_scheduler": "constant",
    "warmup_ratio": 0,
    "hidden_dropout": 0,
    "attention_dropout": 0,
    "eval_every": 4,
    "logging_steps": 1,
    "seed": 0,
    "progress": "false",
}


def tiny_roberta(path: Path) -> Path:
    """A tiny RoBERTa (hidden 32, 2 layers) in HF format with the built-in tokenizer."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    tok = load_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64 + tok.pad_token_id + 1,
        type_vocab_size=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    RobertaForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def flags(d: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in d.items()]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "torchrun"
    env = {
        **os.environ,
        "ZHTUNE_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **CPU_ONLY_ENV,
    }  # gloo on CPU: the resumed run must equal the single-process one
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(exe), "--standalone", "--nproc_per_node", "2", "-m", "zhtune", "finetune", *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train = write_csv(root / "train.csv", labelled_rows(4))  # 64 train / 8 dev / 8 test rows
    model = tiny_roberta(root / "tiny")
    base = ["--train", str(train), "--model", str(model), *flags(COMMON)]
    single = root / "single"
    args = ["--batch-size=8", "--max-steps=16", "--report-to=none", "--out", str(single)]
    assert main(["finetune", *base, *args]) == 0
    ddp = root / "ddp"
    first = torchrun([*base, "--batch-size=4", "--max-steps=8", "--out", str(ddp)], root)
    ckpts = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    shutil.copy(ddp / "history.jsonl", root / "history-first.jsonl")
    second = torchrun([*base, "--batch-size=4", "--max-steps=16", "--out", str(ddp)], root)
    return {"single": single, "ddp": ddp, "logs": [first.stderr, second.stderr], "ckpts": ckpts}


@pytest.mark.slow
def test_both_ranks_train_with_gloo(runs):
    for log in runs["logs"]:
        for rank in (0, 1):
            assert f"rank {rank}/2 (gloo): per-device batch 4, effective batch 8" in log
        assert "rank 0/2 trained" in log and "rank 1/2 trained" in log
    assert "rank 1/2 trained 16 steps" in runs["logs"][1]


@pytest.mark.slow
def test_only_rank0_writes(runs):
    ddp = runs["ddp"]
    hist = read_history(ddp / "history.jsonl")
    keys = [(r["kind"], r["step"]) for r in hist]
    assert len(keys) == len(set(keys))  # one writer: no duplicated rows
    assert [r["step"] for r in hist if r["kind"] == "train"] == list(range(1, 17))
    status = json.loads((ddp / "status.json").read_text(encoding="utf-8"))
    assert status["status"] == "finished" and status["world_size"] == 2
    events = list((ddp / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per launch, from rank 0 only
    assert any(f".{status['pid']}." in e.name for e in events)  # rank 0 of the last launch
    preds = (ddp / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(preds) == json.loads((ddp / "metrics.json").read_text())["n"] == 8


@pytest.mark.slow
def test_resumes_from_checkpoint(runs):
    assert runs["ckpts"] == ["checkpoint-4", "checkpoint-8"]
    assert "resuming from" in runs["logs"][1] and "checkpoint-8" in runs["logs"][1]
    m = json.loads((runs["ddp"] / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed_from"].endswith("checkpoint-8") and m["steps"] == 16


@pytest.mark.slow
def test_same_result_as_single_process(runs):
    one, two = (read_history(runs[k] / "history.jsonl") for k in ("single", "ddp"))
    for kind, key in (("train", "loss"), ("eval", "eval_loss")):
        a = {r["step"]: r[key] for r in one if r["kind"] == kind}
        b = {r["step"]: r[key] for r in two if r["kind"] == kind}
        assert a.keys() == b.keys() and len(a) >= 4
        assert all(abs(a[s] - b[s]) < TOL for s in a), (a, b)
    ma, mb = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("single", "ddp"))
    for key in ("accuracy", "macro_f1", "dev_macro_f1", "best_step"):
        assert ma[key] == mb[key]
    pa, pb = (
        [json.loads(x) for x in (runs[k] / "predictions.jsonl").open()] for k in ("single", "ddp")
    )
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    for x, y in zip(pa, pb, strict=True):
        assert all(abs(x["probs"][k] - y["probs"][k]) < TOL for k in x["probs"])


CONFIGS = Path(__file__).parents[1] / "configs" / "distributed"


def test_distributed_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    ds = json.loads((CONFIGS / "ds_zero2.json").read_text(encoding="utf-8"))
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert json.loads((CONFIGS / "fsdp.json").read_text())["version"] == 2
    kinds = {}
    for name in ("accelerate_ddp.yaml", "accelerate_fsdp.yaml", "accelerate_deepspeed_zero2.yaml"):
        kinds[name] = load_config_from_file(str(CONFIGS / name)).distributed_type.value
    assert kinds == {
        "accelerate_ddp.yaml": "MULTI_GPU",  # torchrun-style processes; gloo without GPUs
        "accelerate_fsdp.yaml": "FSDP",
        "accelerate_deepspeed_zero2.yaml": "DEEPSPEED",
    }
    ds_file = load_config_from_file(str(CONFIGS / "accelerate_deepspeed_zero2.yaml"))
    assert (CONFIGS.parents[1] / ds_file.deepspeed_config["deepspeed_config_file"]).is_file()
    script = CONFIGS / "torchrun_multinode.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# --- zhtune pretrain under torchrun ---------------------------------------------------------
# 1 process with batch 4 against 2 processes with batch 2 each (the same global batch 4).
# Every rank builds and masks the whole global batch with the same seeded generator and
# trains on its half; the loss is summed over its rows and divided by the global number of
# scored positions, so each step's gradient is the 1-process gradient up to floating-point
# summation order. Measured: losses agree to 1e-6, weights to 6e-8 after 6 steps; the
# tolerance here is 1e-4 (loss) and 1e-5 (weights). Dropout is off (its streams differ per rank).
PRETRAIN = {
    "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2,
    "max_seq_length": 32, "max_steps": 6, "log_steps": 1, "save_steps": 3, "dropout": 0.0,
    "precision": "fp32", "cache_dir": "none", "eval_ratio": 0.1, "seed": 0,
    "learning_rate": 1e-3, "warmup_steps": 1, "report_to": "none",
}  # fmt: skip
PT_TOL_LOSS, PT_TOL_WEIGHT = 1e-4, 1e-5


def pretrain_torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(exe), "--standalone", "--nproc_per_node", "2", "-m", "zhtune", "pretrain", *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "history.jsonl").read_text().splitlines()]


def _max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_pretrain_two_processes_match_one(objective, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from test_pretrain import make_texts
    from zhtune.pretrain.loop import PretrainConfig, run_pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_texts()) + "\n", encoding="utf-8")
    settings = {**PRETRAIN, "objective": objective, "text_files": [str(corpus)]}
    one = tmp_path / "one"
    run_pretrain(PretrainConfig(**{**settings, "batch_size": 4}), one)
    two = tmp_path / "two"
    args = [*flags({**settings, "text_files": corpus, "batch_size": 2}), f"--out={two}"]
    p = pretrain_torchrun(args, tmp_path)
    log = p.stdout + p.stderr
    assert "rank 0/2 trained 6 steps" in log and "rank 1/2 trained 6 steps" in log
    assert "global batch 4 = 2 per process x 2 process(es)" in log
    assert (
        log.count("mlm (roberta): 6 steps" if objective == "mlm" else "clm (qwen2): 6 steps") == 1
    )
    # only rank 0 wrote: the same files as the 1-process run, nothing per rank
    assert sorted(f.name for f in two.iterdir()) == sorted(f.name for f in one.iterdir())
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 4
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    assert auto.from_pretrained(two) is not None
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < PT_TOL_LOSS, (a, b)
    assert _max_weight_diff(one, two) < PT_TOL_WEIGHT
    m1 = json.loads((one / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(m1["eval_loss"], abs=PT_TOL_LOSS)
    if objective == "mlm":  # resume under torchrun: from step 3 to the same final weights
        again = tmp_path / "again"
        shutil.copytree(
            two / "checkpoints" / "step-00000003", again / "checkpoints" / "step-00000003"
        )
        p = pretrain_torchrun([*args[:-1], f"--out={again}"], tmp_path)
        assert "resuming from" in p.stdout + p.stderr
        assert _losses(again) == _losses(two)
        assert _max_weight_diff(again, two) < 1e-6


@pytest.mark.slow
def test_electra_under_torchrun_trains_and_resumes_exactly(tmp_path):
    """ELECTRA with 2 processes: both ranks train (each samples its own replacements, so the
    losses are not the 1-process ones), rank 0 writes the discriminator and the generator,
    and a resume from step 3 restores every rank's sampler: the same final weights."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from test_pretrain import make_texts

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_texts()) + "\n", encoding="utf-8")
    settings = {**PRETRAIN, "objective": "electra", "text_files": corpus, "batch_size": 2}
    two = tmp_path / "two"
    args = [*flags(settings), f"--out={two}"]
    p = pretrain_torchrun(args, tmp_path)
    log = p.stdout + p.stderr
    assert "rank 0/2 trained 6 steps" in log and "rank 1/2 trained 6 steps" in log
    assert log.count("electra (electra): 6 steps") == 1
    assert ElectraForPreTraining.from_pretrained(two) is not None
    assert ElectraForMaskedLM.from_pretrained(two / "generator") is not None
    again = tmp_path / "again"
    shutil.copytree(two / "checkpoints" / "step-00000003", again / "checkpoints" / "step-00000003")
    p = pretrain_torchrun([*args[:-1], f"--out={again}"], tmp_path)
    assert "resuming from" in p.stdout + p.stderr
    assert _losses(again) == _losses(two)
    assert _max_weight_diff(again, two) == 0.0
    assert _max_weight_diff(again / "generator", two / "generator") == 0.0
