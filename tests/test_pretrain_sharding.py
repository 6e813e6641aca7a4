"""zhtune pretrain with sharded data parallelism (PyTorch FSDP2) on CPU with gloo.

2 processes under ``--sharding fsdp`` (torchrun) and ``zero2`` (picked up from an accelerate
FSDP config with ``fsdp_reshard_after_forward: false``) against 1 process with the same
global batch 4, as in tests/test_distributed.py for DDP: every rank masks the whole global
batch the same way and trains on its rows; FSDP's reduce-scatter averages like DDP. Measured
(CPU, gloo): losses agree to 1e-6 (the rounding of history.jsonl), weights to 1.3e-7 after 6
steps; the tolerances are those of the DDP test, 1e-4 (loss) and 1e-5 (weights). A resume
from step 3 under torchrun ends at bitwise the same weights (tolerance 1e-6). Untested on
GPUs (nccl).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_distributed import (
    PRETRAIN,
    PT_TOL_LOSS,
    PT_TOL_WEIGHT,
    _losses,
    _max_weight_diff,
    flags,
    pretrain_torchrun,
)
from test_pretrain import make_texts
from zhtune.cli import main
from zhtune.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "distributed"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, dict]:
    """The 1-process reference run (batch 4) and the settings the others share."""
    from zhtune.pretrain.loop import PretrainConfig, run_pretrain

    root = tmp_path_factory.mktemp("sharding")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(make_texts()) + "\n", encoding="utf-8")
    settings = {**PRETRAIN, "objective": "mlm", "text_files": [str(corpus)]}
    run_pretrain(PretrainConfig(**{**settings, "batch_size": 4}), root / "one")
    return root / "one", {**settings, "text_files": corpus}


def _check_two_processes(log: str, one: Path, two: Path, sharding: str) -> None:
    from transformers import AutoModelForMaskedLM

    assert "rank 0/2 trained 6 steps" in log and "rank 1/2 trained 6 steps" in log
    assert (
        f"process(es) x {1 if sharding == 'fsdp' else 2} accumulation, sharding {sharding}" in log
    )
    assert log.count("mlm (roberta): 6 steps") == 1  # rank 0 reports
    # only rank 0 wrote: the same files as the 1-process run, nothing per rank
    assert sorted(f.name for f in two.iterdir()) == sorted(f.name for f in one.iterdir())
    state = json.loads((two / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["sharding"] == sharding and state["world_size"] == 2
    assert type(AutoModelForMaskedLM.from_pretrained(two)).__name__ == "RobertaForMaskedLM"
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < PT_TOL_LOSS, (a, b)
    assert _max_weight_diff(one, two) < PT_TOL_WEIGHT


@pytest.mark.slow  # ~30 s: two torchrun launches
def test_fsdp_two_processes_match_one_and_resume(one_process, tmp_path):
    one, settings = one_process
    two = tmp_path / "two"
    args = [*flags({**settings, "batch_size": 2, "sharding": "fsdp"}), f"--out={two}"]
    p = pretrain_torchrun(args, tmp_path)
    _check_two_processes(p.stdout + p.stderr, one, two, "fsdp")
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], abs=PT_TOL_LOSS)
    # stopped after step 3, resumed under torchrun: the same losses and final weights
    again = tmp_path / "again"
    shutil.copytree(two / "checkpoints" / "step-00000003", again / "checkpoints" / "step-00000003")
    p = pretrain_torchrun([*args[:-1], f"--out={again}"], tmp_path)
    assert "resuming from" in p.stdout + p.stderr
    assert _losses(again) == _losses(two)
    assert _max_weight_diff(again, two) < 1e-6


@pytest.mark.slow  # ~15 s: one accelerate launch
def test_zero2_from_the_accelerate_fsdp_config(one_process, tmp_path):
    """The shipped FSDP config with reshard_after_forward false is ZeRO-2; with 2 micro-batches
    per process (gradient sync on the last only) the global batch is still 4."""
    one, settings = one_process
    yaml = (CONFIGS / "accelerate_fsdp.yaml").read_text(encoding="utf-8")
    assert "fsdp_reshard_after_forward: true" in yaml
    config = tmp_path / "zero2.yaml"
    config.write_text(yaml.replace("reshard_after_forward: true", "reshard_after_forward: false"))
    two = tmp_path / "two"
    exe = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(exe), "launch", "--config_file", str(config), "--num_processes", "2",
        "--mixed_precision", "no", "-m", "zhtune", "pretrain",
        *flags({**settings, "batch_size": 1, "gradient_accumulation_steps": 2}), f"--out={two}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "sharding zero2 (from the accelerate FSDP config)" in log
    _check_two_processes(log, one, two, "zero2")


def test_sharded_gradients_are_the_one_process_gradient(tmp_path):
    """FSDP's reduce-scatter averages like DDP's all-reduce: with the loop's loss scaling the
    step's gradient is the 1-process one (measured: 6e-8 of 0.45; a sum instead of a mean
    would be off by the whole gradient). Clipping is off: it would hide a constant factor."""
    exe = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = Path(__file__).with_name("sharded_grads.py")
    cmd = [str(exe), "--standalone", "--nproc_per_node", "2", str(script)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    diffs = json.loads(p.stdout.split("GRADS ", 1)[1].splitlines()[0])
    assert diffs["scale"] > 0.01
    for mode in ("none", "fsdp", "zero2"):
        assert diffs[mode] < 1e-5 * diffs["scale"], diffs


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "none"),
        ({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}, "fsdp"),
        ({"FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, "zero2"),
        ({"FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "SHARD_GRAD_OP"}, "zero2"),
        ({"FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}, "fsdp"),
        ({"FSDP_VERSION": "1", "FSDP_RESHARD_AFTER_FORWARD": "NO_SHARD"}, "none"),
    ],
)
def test_sharding_auto_follows_the_accelerate_fsdp_env(monkeypatch, env, mode):
    from zhtune.pretrain.sharding import resolve_mode

    if env:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert resolve_mode("auto") == mode
    assert resolve_mode("zero2") == "zero2"  # --sharding wins over the launcher


def test_hybrid_shard_is_a_one_line_error(monkeypatch):
    from zhtune.pretrain.sharding import resolve_mode

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "HYBRID_SHARD")
    with pytest.raises(ConfigError, match="HYBRID_SHARD is not supported"):
        resolve_mode("auto")


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_texts()) + "\n", encoding="utf-8")
    settings = {**PRETRAIN, "text_files": corpus, "max_steps": 2, "save_steps": 2}
    return ["pretrain", *flags(settings), f"--out={tmp_path / 'run'}", *extra]


def test_deepspeed_config_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets
    code = main(_cli_args(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "no DeepSpeed engine" in err and "--sharding zero2" in err
    assert not (tmp_path / "run").exists()


def test_sharding_with_one_process_trains_plainly(tmp_path, caplog, capsys):
    """No launcher: --sharding fsdp has nothing to shard; it says so and trains as usual.
    A checkpoint written with another sharding mode is refused in one line."""
    with caplog.at_level("INFO", logger="zhtune"):
        assert main(_cli_args(tmp_path, "--sharding=fsdp")) == 0
    assert "sharding fsdp with one process: nothing to shard, plain training" in caplog.text
    saved = tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json"
    state = json.loads(saved.read_text())
    assert state["sharding"] == "none" and state["world_size"] == 1
    saved.write_text(json.dumps({**state, "sharding": "fsdp"}))  # as if from an FSDP run
    capsys.readouterr()
    assert main(_cli_args(tmp_path, "--max-steps=4")) == 2
    err = capsys.readouterr().err.strip()
    assert "written with sharding fsdp, this run has none" in err and "\n" not in err
