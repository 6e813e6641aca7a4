"""`zhtune distill`: the loss by hand, the teacher cache, the student run directory (an
ordinary encoder run: load, evaluate, serve) and the one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from zhtune.cli import main

TINY = ["--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2",
        "--intermediate-size", "64", "--max-steps", "3", "--batch-size", "8", "--max-length",
        "32", "--learning-rate", "1e-3", "--progress", "false", "--report-to", "none"]  # fmt: skip
DATA = ["--dev-ratio", "0.2", "--test-ratio", "0.2"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_student_loss_is_kl_plus_ce_on_a_hand_made_batch() -> None:
    import torch

    from zhtune.finetune.distill import DistillConfig, distill_loss, make_distill_loss_fn

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 1, -1])  # the last row is an unlabeled text
    t, alpha = 2.0, 0.4
    p_t = _softmax(np.log(teacher) / t)
    q_t = _softmax(logits / t)
    kl = (p_t * (np.log(p_t) - np.log(q_t))).sum(1)
    ce = -np.log(_softmax(logits)[[0, 1], [0, 1]])
    expected = alpha * t * t * kl.sum() + (1 - alpha) * ce.sum()
    args = (torch.tensor(logits), torch.tensor(teacher), torch.tensor(labels))
    assert float(distill_loss(*args, t, alpha)) == pytest.approx(expected, rel=1e-5)
    # the KL term agrees with torch's own kl_div; alpha 0 is plain cross-entropy
    ref_kl = torch.nn.functional.kl_div(
        torch.log_softmax(torch.tensor(logits) / t, -1), torch.tensor(p_t), reduction="sum"
    )
    assert float(distill_loss(*args, t, 1.0)) == pytest.approx(t * t * float(ref_kl), rel=1e-5)
    assert float(distill_loss(*args, t, 0.0)) == pytest.approx(ce.sum(), rel=1e-5)
    # as the Trainer calls it: labels packed as [hard, p_1..p_K], mean over the rows
    cfg = DistillConfig(teacher="x", temperature=t, alpha=alpha)
    packed = torch.tensor(np.concatenate([labels[:, None], teacher], 1))
    fn = make_distill_loss_fn(cfg)
    out = {"logits": torch.tensor(logits)}
    assert float(fn(out, packed)) == pytest.approx(expected / 3, rel=1e-5)
    assert float(fn(out, packed, num_items_in_batch=9)) == pytest.approx(expected / 3, rel=1e-5)
    dev = torch.tensor([0, 1, 1])  # dev rows: plain labels, cross-entropy
    ce_dev = -np.log(_softmax(logits)[[0, 1, 2], [0, 1, 1]]).mean()
    assert float(fn(out, dev)) == pytest.approx(ce_dev, rel=1e-5)


def test_teacher_probabilities_are_computed_once(tmp_path: Path) -> None:
    from zhtune.finetune.distill import CACHE_FILE, teacher_probs
    from zhtune.runs import write_manifest

    class Teacher:
        calls = 0

        def predict_proba(self, texts, batch_size=32):
            Teacher.calls += 1
            return np.tile([0.25, 0.75], (len(texts), 1))

    tdir = tmp_path / "teacher"
    tdir.mkdir()
    write_manifest(tdir, "baseline", ["a", "b"])
    first = teacher_probs(Teacher(), tdir, ["一", "二"], tmp_path, 8)
    again = teacher_probs(Teacher(), tdir, ["一", "二"], tmp_path, 8)
    assert Teacher.calls == 1 and (tmp_path / CACHE_FILE).is_file()
    assert np.array_equal(first, again) and first.shape == (2, 2)
    teacher_probs(Teacher(), tdir, ["一", "三"], tmp_path, 8)  # other texts: scored again
    assert Teacher.calls == 2


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("distill")
    data = write_csv(d / "data.csv", labelled_rows(4))
    assert main(["baseline", "--train", str(data), *DATA, "--out", str(d / "teacher")]) == 0
    return {"data": data, "teacher": d / "teacher", "dir": d}


@pytest.mark.slow
def test_distill_cli_student_is_an_encoder_run(teacher: dict, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from zhtune import Classifier
    from zhtune.serving.server import ServeSettings, create_app

    unl = tmp_path / "unlabeled.txt"
    unl.write_text("还不错吧\n很糟糕的体验\n", encoding="utf-8")
    out = tmp_path / "student"
    rc = main(["distill", "--teacher", str(teacher["teacher"]), "--train", str(teacher["data"]),
               *DATA, *TINY, "--temperature", "3", "--alpha", "0.7", "--unlabeled", str(unl),
               "--augment", "homophone", "--out", str(out)])  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "zhtune.json").read_text())
    assert manifest["kind"] == "encoder"
    assert manifest["distilled_from"] == str(teacher["teacher"].resolve())
    summary = json.loads((out / "distill.json").read_text())
    data = json.loads((out / "data.json").read_text())
    n_train = data["augmentation"]["train_rows_after"]
    assert summary["soft_label_texts"] == n_train + 2 and summary["unlabeled_texts"] == 2
    for who in ("teacher", "student"):
        assert 0 <= summary[who]["accuracy"] <= 1 and summary[who]["texts_per_second"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["accuracy"] == summary["teacher"]["accuracy"]
    assert metrics["temperature"] == 3 and metrics["alpha"] == 0.7
    from safetensors.numpy import load_file

    cached = load_file(str(out / "teacher_probs.safetensors"))["probs"]
    assert cached.shape == (n_train + 2, 2)
    assert np.allclose(cached.sum(1), 1, atol=1e-5)
    clf = Classifier.load(out)
    assert clf.kind == "encoder" and clf.predict("质量很好")["label"] in clf.labels
    assert main(["evaluate", "--model", str(out), "--out", str(tmp_path / "ev"),
                 "--no-robustness"]) == 0  # fmt: skip
    with TestClient(create_app(ServeSettings(model=str(out)))) as client:
        for _ in range(400):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        r = client.post("/v1/classify", json={"texts": ["质量很好"]})
        assert r.status_code == 200 and r.json()["results"][0]["label"] in clf.labels


def test_bad_teacher_and_augmentation_are_one_line_errors(teacher: dict, tmp_path: Path,
                                                          capsys) -> None:  # fmt: skip
    other = write_csv(tmp_path / "other.csv", [(t, "好" if lbl == "positive" else "坏")
                                               for t, lbl in labelled_rows(4)])  # fmt: skip

    def err(*args: str) -> str:
        assert main(["distill", *args, *DATA, *TINY, "--out", str(tmp_path / "x")]) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1
        return e

    e = err("--teacher", str(teacher["teacher"]), "--train", str(other))
    assert "negative" in e and "好" in e
    assert "not a zhtune run directory" in err("--teacher", str(tmp_path), "--train", str(other))
    e = err("--teacher", str(teacher["teacher"]), "--train", str(other), "--augment", "typo")
    assert "'typo'" in e and "homophone" in e and "synonym" in e
