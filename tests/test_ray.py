"""Batch prediction with Ray Data: same rows, same order, same values as local predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from zhtune.baseline import BaselineConfig, run_baseline
from zhtune.cli import main
from zhtune.integrations.ray import ClassifierPredictor, model_labels


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray")
    train = write_csv(root / "train.csv", labelled_rows(3))
    run_baseline(BaselineConfig(train=str(train), min_df=1), root / "model")
    return root / "model"


def test_predictor_is_a_map_batches_callable(baseline):
    pred = ClassifierPredictor(str(baseline), batch_size=4)
    batch = {
        "id": np.arange(3),
        "text": np.array(["质量很好", "太差了，退货", "还行"], dtype=object),
    }
    out = pred(batch)
    assert list(out["id"]) == [0, 1, 2]  # other columns pass through
    assert out["probs"].shape == (3, 2) and np.allclose(out["probs"].sum(1), 1)
    assert list(out["label"]) == [pred.labels[i] for i in out["probs"].argmax(1)]
    assert np.allclose(out["confidence"], out["probs"].max(1))
    assert model_labels(str(baseline)) == pred.labels == ["negative", "positive"]
    empty = pred({"text": np.array([], dtype=object)})
    assert len(empty["label"]) == 0 and empty["probs"].shape == (0, 2)


@pytest.mark.slow
def test_ray_engine_equals_local_predict(baseline, tmp_path):
    ray = pytest.importorskip("ray", reason='--engine ray needs `pip install "ray[data]"`')

    rows = [(f"{t}{i}", label) for i, (t, label) in enumerate(labelled_rows(3) * 50)]  # 3000
    data = write_csv(tmp_path / "texts.csv", rows)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    base = ["predict", "--model", str(baseline), "--file", str(data), "--batch-size", "64"]
    assert main([*base, "--out", str(local)]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main([*base, "--engine", "ray", "--num-actors", "2", "--out", str(remote)]) == 0
    finally:
        ray.shutdown()
    a = local.read_text(encoding="utf-8").splitlines()
    b = remote.read_text(encoding="utf-8").splitlines()
    assert len(a) == len(b) == 3000
    assert a == b  # row for row, in input order, byte-identical JSON
    assert json.loads(b[-1])["line"] == 3001  # header is line 1


def test_ray_engine_needs_a_file(baseline, capsys):
    assert main(["predict", "--model", str(baseline), "--text", "好", "--engine", "ray"]) == 2
    assert "--engine ray predicts a --file" in capsys.readouterr().err
