"""Reliability: training faults (docs/reliability.md, "Training faults").

- ``kill -9`` at a seeded random moment after a checkpoint exists, then the same command with
  ``--resume-from-checkpoint auto``: per-step losses (history.jsonl) and final weights equal
  those of an uninterrupted run, for pretrain, finetune and lora (CLI subprocesses).
- An interrupted checkpoint save: the newest *complete* checkpoint is used, a half-written
  one never is.
- An unwritable output directory fails before any work; a full disk (a per-file size limit,
  RLIMIT_FSIZE) fails with one line and leaves no checkpoint that resume would pick.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import CPU_ONLY_ENV
from test_reliability_helpers import (
    ENV_1THREAD,
    corpus_txt,
    run_zhtune,
    tiny_qwen2,
    tiny_roberta_mlm,
    train_csv,
    wait_for,
    zhtune_cmd,
)
from zhtune.cli import main

SEED = 9  # picks the checkpoint after which each run is killed, and the extra delay
TOL = 1e-6
COMPARED = ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "eval_macro_f1")

TRAINER_FLAGS = [
    "--max-steps", "16", "--eval-every", "2", "--logging-steps", "1", "--batch-size", "8",
    "--max-length", "32", "--warmup-ratio", "0", "--progress", "false",
    "--report-to", "none", "--seed", "3",
]  # fmt: skip


def _flags(extra: dict) -> list[str]:
    return [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen(
        zhtune_cmd(*args),
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={**os.environ, **ENV_1THREAD, **CPU_ONLY_ENV},  # exact resume holds on CPU only
        start_new_session=True,
    )


def _history(path: Path) -> dict[tuple, dict]:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    out = {}
    for r in rows:
        if r.get("kind", "train") not in ("train", "eval"):
            continue  # the summary row holds timings
        key = (r.get("kind", "train"), r["step"])
        assert key not in out, f"step logged twice: {key}"
        out[key] = r
    return out


def _assert_same_history(ref: Path, resumed: Path) -> int:
    a, b = _history(ref), _history(resumed)
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    worst = 0.0
    for key, ra in a.items():
        for f in COMPARED:
            if f in ra:
                worst = max(worst, abs(float(ra[f]) - float(b[key][f])))
                assert b[key][f] == pytest.approx(ra[f], abs=TOL, rel=TOL), (key, f)
    return len(a)


def _assert_same_weights(ref: Path, resumed: Path) -> float:
    a, b = load_file(str(ref)), load_file(str(resumed))
    assert sorted(a) == sorted(b)
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    assert worst <= TOL, worst
    return worst


def _kill_resume(
    tmp_path: Path,
    args: list[str],
    complete: str,
    save_steps: list[int],
    history: str,
    weights: str,
) -> dict:
    """Reference run and victim run in parallel; kill -9 the victim at a seeded moment after
    checkpoint ``complete.format(step)`` exists; resume; compare with the reference."""
    rng = random.Random(f"{SEED}-{args[0]}")
    step, delay = rng.choice(save_steps), rng.uniform(0.0, 0.2)
    ref, run = tmp_path / "reference", tmp_path / "killed"
    p_ref = _spawn([*args, "--out", str(ref)], tmp_path / "reference.log")
    p_run = _spawn([*args, "--out", str(run)], tmp_path / "killed.log")
    marker = run / complete.format(step)
    try:
        assert wait_for(marker.exists, timeout=240, interval=0.005, proc=p_run), (
            tmp_path / "killed.log"
        ).read_text()
        time.sleep(delay)
        os.killpg(p_run.pid, signal.SIGKILL)  # kill -9 (the whole process group)
        assert p_run.wait(30) == -signal.SIGKILL, "the run finished before the kill"
        killed_at = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert not (run / weights).exists(), "the killed run has final weights"
        assert p_ref.wait(300) == 0, (tmp_path / "reference.log").read_text()
    finally:
        for p in (p_ref, p_run):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    t = time.perf_counter()
    res = run_zhtune(*args, "--out", str(run), "--resume-from-checkpoint", "auto", env=CPU_ONLY_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _assert_same_history(ref / history, run / history)
    worst = _assert_same_weights(ref / weights, run / weights)
    figures = {
        "command": args[0],
        "kill_after": step,
        "delay": round(delay, 3),
        "checkpoints_at_kill": killed_at,
        "rows": rows,
        "max_weight_diff": worst,
        "resume_seconds": round(time.perf_counter() - t, 1),
    }
    print(json.dumps(figures), file=sys.__stderr__)  # the figures in docs/reliability.md
    return {**figures, "stderr": res.stderr}


# --- kill -9 and resume ---------------------------------------------------------------------
@pytest.mark.slow
def test_kill9_pretrain_resume_matches_uninterrupted(tmp_path: Path) -> None:
    corpus = corpus_txt(tmp_path / "corpus.txt")
    args = ["pretrain", "--text-files", str(corpus), *_flags({
        "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2,
        "max_seq_length": 32, "batch_size": 4, "max_steps": 40, "log_steps": 1,
        "save_steps": 4, "save_total_limit": 2, "learning_rate": 1e-3, "warmup_steps": 2,
        "precision": "fp32", "cache_dir": "none", "num_threads": 1, "report_to": "none",
        "eval_ratio": 0.05,
    })]  # fmt: skip
    r = _kill_resume(
        tmp_path, args, "checkpoints/step-{:08d}", [4, 8, 12, 16], "history.jsonl",
        "model.safetensors",
    )  # fmt: skip
    assert "resuming from" in r["stderr"], r["stderr"][-2000:]
    assert r["rows"] == 40  # one row a step


@pytest.mark.slow
def test_kill9_finetune_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = train_csv(tmp_path / "train.csv")
    base = tiny_roberta_mlm(tmp_path / "base")
    args = ["finetune", "--train", str(data), "--model", str(base), "--learning-rate", "3e-3",
            *TRAINER_FLAGS]  # fmt: skip
    r = _kill_resume(
        tmp_path, args, "checkpoints/checkpoint-{}/trainer_state.json", [4, 6, 8, 10],
        "history.jsonl", "model.safetensors",
    )  # fmt: skip
    m = json.loads((tmp_path / "killed" / "metrics.json").read_text(encoding="utf-8"))
    ref = json.loads((tmp_path / "reference" / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed_from"] and m["steps"] == 16
    assert m["accuracy"] == ref["accuracy"] and m["best_step"] == ref["best_step"]
    assert r["rows"] >= 16 + 8  # a train row a step, an eval row every 2 steps


@pytest.mark.slow
def test_kill9_lora_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = train_csv(tmp_path / "train.csv", copies=2)
    base = tiny_qwen2(tmp_path / "base")
    args = ["lora", "--train", str(data), "--model", str(base), "--mode", "head",
            "--learning-rate", "1e-2", "--lora-r", "4", "--lora-alpha", "8", *TRAINER_FLAGS]  # fmt: skip
    r = _kill_resume(
        tmp_path, args, "checkpoints/checkpoint-{}/trainer_state.json", [4, 6, 8, 10],
        "history.jsonl", "adapter_model.safetensors",
    )  # fmt: skip
    m = json.loads((tmp_path / "killed" / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed_from"] and m["steps"] == 16
    assert r["rows"] >= 16 + 8


# --- an interrupted checkpoint save ---------------------------------------------------------
PRETRAIN_INPROC = {
    "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_hidden_layers": 1,
    "max_seq_length": 32, "batch_size": 4, "max_steps": 12, "log_steps": 1, "save_steps": 4,
    "learning_rate": 1e-3, "precision": "fp32", "cache_dir": "none", "num_threads": 1,
    "report_to": "none", "eval_ratio": 0.05,
}  # fmt: skip


def test_pretrain_interrupted_save_is_never_picked(tmp_path, monkeypatch, caplog) -> None:
    """pretrain writes ``.tmp-step-N-PID/`` and renames it to ``step-N``: an interrupt in the
    middle of a save leaves only the temporary directory, and resume auto takes step 4."""
    import zhtune.training.checkpoints as ckpt

    corpus = corpus_txt(tmp_path / "corpus.txt", n=80)
    args = ["-q", "pretrain", "--text-files", str(corpus), *_flags(PRETRAIN_INPROC)]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    real = ckpt.save_file

    def save_file(tensors, path, *a, **kw):  # the optimizer is written, then the rng file
        if "step-00000008" in str(path) and path.endswith("rng.safetensors"):
            raise KeyboardInterrupt  # as if killed mid-save
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 130
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[0] == ".tmp-step-00000008-" + str(os.getpid()) and names[1:] == ["step-00000004"]
    assert sorted(f.name for f in (out / "checkpoints" / names[0]).iterdir()) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "scheduler.json",
    ]
    # a copied/partial step directory without its state file is not complete either
    (out / "checkpoints" / "step-00000010").mkdir()
    (out / "checkpoints" / "step-00000010" / "model.safetensors").write_bytes(b"partial")
    monkeypatch.setattr(ckpt, "save_file", real)
    caplog.set_level("INFO", logger="zhtune")
    assert main([*args, "--out", str(out)]) == 0
    assert any(
        "resuming from" in r.message and "step-00000004" in r.message for r in caplog.records
    )
    _assert_same_history(tmp_path / "ref" / "history.jsonl", out / "history.jsonl")
    _assert_same_weights(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


def test_finetune_interrupted_save_is_never_picked(tmp_path, monkeypatch) -> None:
    """The HF Trainer writes ``checkpoint-N/`` in place (no temporary directory);
    ``trainer_state.json`` is its last file, so a checkpoint without a parseable one is
    incomplete: interrupt the save of checkpoint-6, plant a checkpoint-8 whose state file was
    cut short, and resume auto takes checkpoint-4 and ends where an uninterrupted run ends."""
    import transformers

    monkeypatch.setenv("ZHTUNE_THREADS", "1")
    data = train_csv(tmp_path / "train.csv")
    base = tiny_roberta_mlm(tmp_path / "base")
    flags = [x.replace("16", "10") for x in TRAINER_FLAGS]  # --max-steps 10
    args = ["-q", "finetune", "--train", str(data), "--model", str(base), "--learning-rate",
            "3e-3", *flags]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    real = transformers.Trainer._save_rng_state

    def interrupted(self, output_dir):
        if self.state.global_step == 6:
            raise KeyboardInterrupt  # weights and optimizer written, state not yet
        return real(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", interrupted)
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 130
    ck = out / "checkpoints"
    assert (ck / "checkpoint-6" / "model.safetensors").is_file()
    assert not (ck / "checkpoint-6" / "trainer_state.json").exists()
    import shutil

    shutil.copytree(ck / "checkpoint-4", ck / "checkpoint-8")
    state = (ck / "checkpoint-8" / "trainer_state.json").read_bytes()
    (ck / "checkpoint-8" / "trainer_state.json").write_bytes(state[: len(state) // 2])
    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", real)
    assert main([*args, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed_from"].endswith("checkpoint-4"), m["resumed_from"]
    _assert_same_history(tmp_path / "ref" / "history.jsonl", out / "history.jsonl")
    _assert_same_weights(tmp_path / "ref" / "model.safetensors", out / "model.safetensors")


@pytest.mark.parametrize("command", ["finetune", "lora"])
def test_killed_after_its_last_checkpoint_resumes_without_an_extra_step(
    tmp_path, monkeypatch, command
) -> None:
    """A run killed after it saved ``checkpoint-<max_steps>`` but before its final weights:
    transformers 5's ``Trainer.train`` would run step max_steps + 1 (it checks the budget only
    after a step; CI caught this as a flaky kill -9 test). Resume must train nothing, load the
    best checkpoint and end exactly where the uninterrupted run ended."""
    import shutil

    monkeypatch.setenv("ZHTUNE_THREADS", "1")
    data = train_csv(tmp_path / "train.csv")
    flags = [x.replace("16", "10") for x in TRAINER_FLAGS]  # --max-steps 10: mid-epoch
    if command == "finetune":
        base, extra, weights = tiny_roberta_mlm(tmp_path / "base"), [], "model.safetensors"
    else:
        base, weights = tiny_qwen2(tmp_path / "base"), "adapter_model.safetensors"
        extra = ["--mode", "head", "--lora-r", "4", "--lora-alpha", "8"]
    args = ["-q", command, "--train", str(data), "--model", str(base), "--learning-rate",
            "3e-3", *extra, *flags]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main([*args, "--out", str(ref)]) == 0
    shutil.copytree(ref, out)
    for name in (weights, "metrics.json"):
        (out / name).unlink()  # as if killed right after checkpoint-10 was complete
    assert main([*args, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    r = json.loads((ref / "metrics.json").read_text(encoding="utf-8"))
    assert m["resumed_from"].endswith("checkpoint-10") and m["steps"] == 10
    assert m["best_step"] == r["best_step"] and m["accuracy"] == r["accuracy"]
    assert _assert_same_history(ref / "history.jsonl", out / "history.jsonl") == 10 + 5
    _assert_same_weights(ref / weights, out / weights)


# --- where nothing can be written -------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from test_reliability_helpers import tiny_bert_classifier

    root = tmp_path_factory.mktemp("models")
    return {
        "root": root,
        "train": train_csv(root / "train.csv"),
        "corpus": corpus_txt(root / "corpus.txt", n=40),
        "roberta": tiny_roberta_mlm(root / "roberta"),
        "qwen2": tiny_qwen2(root / "qwen2"),
        "classifier": tiny_bert_classifier(root / "classifier"),
    }


def _writing_commands(m: dict[str, Path], out: Path) -> dict[str, list[str]]:
    data = ["--train", str(m["train"])]
    quick = ["--max-steps", "2", "--progress", "false", "--report-to", "none"]
    return {
        "baseline": ["baseline", *data, "--out", str(out)],
        "pretrain": [
            "pretrain",
            "--text-files",
            str(m["corpus"]),
            "--max-steps",
            "2",
            "--cache-dir",
            "none",
            "--report-to",
            "none",
            "--out",
            str(out),
        ],  # fmt: skip
        "finetune": ["finetune", *data, "--model", str(m["roberta"]), *quick, "--out", str(out)],
        "lora": ["lora", *data, "--model", str(m["qwen2"]), *quick, "--out", str(out)],
        "evaluate": ["evaluate", *data, "--model", str(m["classifier"]), "--out", str(out)],
        "export": ["export", "--model", str(m["classifier"]), "--out", str(out)],
    }


UNWRITABLE = {
    "under-a-file": lambda root: root / "a-file" / "run",
    "under-proc": lambda root: Path("/proc/zhtune-no-such-dir/run"),
}


@pytest.mark.parametrize("where", list(UNWRITABLE))
@pytest.mark.parametrize(
    "command", ["baseline", "pretrain", "finetune", "lora", "evaluate", "export"]
)
def test_unwritable_output_directory_fails_before_work(models, where, command, capsys) -> None:
    (models["root"] / "a-file").write_text("not a directory")
    out = UNWRITABLE[where](models["root"])
    t = time.perf_counter()
    rc = main([*_writing_commands(models, out)[command]])
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert "cannot write to output directory" in err[-1] and str(out) in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert seconds < 30, seconds  # no model load / training first (the bound is loose: shared CPU)


def test_read_only_output_directory(models, tmp_path, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 0o500 does not stop root from writing")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = main(_writing_commands(models, ro / "run")["baseline"])
    finally:
        ro.chmod(0o700)
    assert rc == 2 and "cannot write to output directory" in capsys.readouterr().err


def _fsize_limit() -> None:  # in the child: files over 1 MB cannot be written (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_full_disk_fails_in_one_line_and_leaves_no_usable_checkpoint(models, tmp_path, command):
    """Writes over 1 MB fail (RLIMIT_FSIZE, like a full disk): the first checkpoint cannot be
    written. One line, non-zero exit, no traceback; what is left is never picked by resume,
    and the same command without the limit then runs to the end."""
    out = tmp_path / "run"
    args = {
        "pretrain": [
            "pretrain",
            "--text-files",
            str(models["corpus"]),
            *_flags({**PRETRAIN_INPROC, "max_steps": 4, "save_steps": 2}),
        ],  # fmt: skip
        "finetune": [
            "finetune",
            "--train",
            str(models["train"]),
            "--model",
            str(models["roberta"]),
            *[x.replace("16", "4") for x in TRAINER_FLAGS],
        ],  # fmt: skip
    }[command]
    res = subprocess.run(
        zhtune_cmd(*args, "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_fsize_limit,
        env={**os.environ, **ENV_1THREAD},
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr[-2000:]
    assert "File too large" in lines[-1] and "Traceback" not in res.stderr, lines[-3:]
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert left, "expected the partial checkpoint to be left behind"
    if command == "pretrain":
        from zhtune.training.checkpoints import latest_checkpoint

        assert (
            all(n.startswith(".tmp-step-") for n in left)
            and latest_checkpoint(out / "checkpoints") is None
        )
    else:
        from zhtune.training.trainer import find_checkpoint

        assert find_checkpoint(out / "checkpoints") is None
    res = run_zhtune(*args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "model.safetensors").is_file()
