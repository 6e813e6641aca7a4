"""The sha256 manifest of the weight files (``zhtune.json`` ``weights``): written at the end of
training, checked by ``Classifier.load`` and so by predict / evaluate / serve; a flipped byte
inside the tensor data (which safetensors alone cannot see) is one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, tiny_encoder
from test_reliability_helpers import run_zhtune, zhtune_cmd
from zhtune import Classifier
from zhtune.cli import main
from zhtune.errors import ModelLoadError
from zhtune.runs import check_safetensors_file, finish_model_dir, read_manifest, write_json


def flip_tensor_byte(f: Path) -> None:
    """XOR one byte in the middle of the tensor data (past the header)."""
    b = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(b[:8], "little")
    b[start + (len(b) - start) // 2] ^= 0x01
    f.write_bytes(bytes(b))


@pytest.fixture
def baseline_run(tmp_path: Path, sentiment_csv: Path) -> Path:
    out = tmp_path / "run"
    args = ["baseline", "--train", str(sentiment_csv), "--out", str(out), "--min-df", "1"]
    assert main([*args, "--dev-ratio", "0.2", "--test-ratio", "0.2"]) == 0
    return out


def test_training_writes_the_digests(baseline_run: Path) -> None:
    weights = read_manifest(baseline_run)["weights"]
    assert set(weights) == {"baseline.safetensors", "baseline.json"}
    for name, digest in weights.items():
        assert digest == hashlib.sha256((baseline_run / name).read_bytes()).hexdigest()
    Classifier.load(baseline_run).predict("很好")  # verifies and loads


def test_flipped_byte_is_caught_by_load(tmp_path: Path, caplog) -> None:
    d = tiny_encoder(tmp_path / "enc")
    finish_model_dir(d, {})
    assert list(read_manifest(d)["weights"]) == ["model.safetensors"]
    flip_tensor_byte(d / "model.safetensors")
    check_safetensors_file(d / "model.safetensors")  # safetensors itself sees nothing wrong
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: sha256 .* does not match"):
        Classifier.load(d)
    clf = Classifier.load(d, skip_verify=True)
    assert clf.predict("好")["label"] in ("negative", "positive")
    assert "NOT verified" in caplog.text
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="listed in zhtune.json but missing"):
        Classifier.load(d)


def test_directory_without_digests_loads_as_before(tmp_path: Path) -> None:
    d = tiny_encoder(tmp_path / "enc")  # zhtune.json without "weights"
    flip_tensor_byte(d / "model.safetensors")
    assert "weights" not in read_manifest(d)
    Classifier.load(d).predict("好")
    plain = tmp_path / "plain"  # a plain Hugging Face directory: no zhtune.json at all
    shutil.copytree(d, plain)
    (plain / "zhtune.json").unlink()
    Classifier.load(plain).predict("好")


def test_copied_manifest_never_carries_old_digests(tmp_path: Path) -> None:
    from zhtune.runs import write_manifest

    write_manifest(tmp_path, "encoder", ["a", "b"], weights={"model.safetensors": "0" * 64})
    assert "weights" not in json.loads((tmp_path / "zhtune.json").read_text())


def _one_line_exit_2(proc: subprocess.CompletedProcess, name: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "baseline.safetensors: sha256" in last and "--skip-verify" in last, last
    assert last.startswith(f"zhtune {name}: error:"), last


@pytest.mark.slow  # four zhtune processes
def test_predict_evaluate_serve_refuse_a_flipped_byte(baseline_run: Path, tmp_path: Path) -> None:
    flip_tensor_byte(baseline_run / "baseline.safetensors")
    _one_line_exit_2(run_zhtune("predict", "--model", str(baseline_run), "--text", "好"), "predict")
    ev = run_zhtune("evaluate", "--model", str(baseline_run), "--out", str(tmp_path / "ev"))
    _one_line_exit_2(ev, "evaluate")
    port = str(free_port())
    serve = subprocess.run(
        zhtune_cmd("serve", "--model", str(baseline_run), "--port", port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_exit_2(serve, "serve")
    ok = run_zhtune("predict", "--model", str(baseline_run), "--text", "好", "--skip-verify")
    assert ok.returncode == 0, ok.stderr
    assert "NOT verified" in ok.stderr and json.loads(ok.stdout.splitlines()[0])["label"]


def test_verification_cost_is_small(tmp_path: Path) -> None:
    """The check reads each weight file once: ~1 GB/s or better on one core."""
    from zhtune.runs import verify_weights, weight_digests

    f = tmp_path / "big.safetensors"
    f.write_bytes(b"\0" * (64 * 2**20))
    write_json(tmp_path / "zhtune.json", {"kind": "encoder", "weights": weight_digests(tmp_path)})
    t = time.perf_counter()
    verify_weights(tmp_path, read_manifest(tmp_path))
    dt = time.perf_counter() - t
    print(f"verify: 64 MiB in {dt:.3f}s", file=sys.__stderr__)
    assert dt < 5


def test_concurrent_writers_never_clobber(tmp_path: Path) -> None:
    """8 processes' worth of writers (threads here) rewrite the same run-directory file: every
    read sees one whole version, no writer fails, no temp file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    from zhtune.runs import write_jsonl

    target, rows_target = tmp_path / "metrics.json", tmp_path / "predictions.jsonl"
    payloads = [{"writer": w, "pad": "数据" * (2000 + 500 * w)} for w in range(8)]
    seen: list[int] = []

    def write(w: int) -> None:
        for _ in range(25):
            write_json(target, payloads[w])
            write_jsonl(rows_target, [payloads[w]] * 3)
            seen.append(json.loads(target.read_text(encoding="utf-8"))["writer"])
            rows = [json.loads(x) for x in rows_target.read_text(encoding="utf-8").splitlines()]
            assert len(rows) == 3 and len({r["writer"] for r in rows}) == 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # re-raises any writer's error
    assert json.loads(target.read_text(encoding="utf-8")) in payloads
    assert len(seen) == 200 and set(seen) <= set(range(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.jsonl"]
