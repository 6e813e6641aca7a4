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


def test_device_for_ray_actors():
    from zhtune.errors import ConfigError
    from zhtune.integrations.ray import actor_device

    assert actor_device("cuda") == ("cuda", 1.0)  # cuda asks Ray for a GPU per actor
    assert actor_device("cuda", 0.5) == ("cuda", 0.5)  # two actors share one
    assert actor_device("cpu") == ("cpu", 0.0) and actor_device(None) == ("auto", 0.0)
    assert actor_device("auto", 1) == ("auto", 1)
    for spec, gpus, needle in [("cuda:1", 0, "Ray assigns each actor its GPU"),
                               ("tpu", 0, "allowed values"), ("cpu", 1, "pick one")]:  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            actor_device(spec, gpus)


def test_actors_request_gpus_and_load_on_the_device(baseline, monkeypatch):
    pytest.importorskip("ray", reason='--engine ray needs `pip install "ray[data]"`')
    from zhtune.integrations.ray import predict_dataset

    class Recorder:  # stands in for a Ray Dataset: what map_batches was asked for
        def map_batches(self, fn, **kw):
            self.fn, self.kw = fn, kw
            return self

    ds = predict_dataset(Recorder(), str(baseline), num_actors=2, device="cuda")
    assert ds.kw["num_gpus"] == 1.0 and ds.kw["fn_constructor_kwargs"]["device"] == "cuda"
    ds = predict_dataset(Recorder(), str(baseline), num_actors=2, device="cpu")
    assert ds.kw["num_gpus"] is None and ds.kw["fn_constructor_kwargs"]["device"] == "cpu"
    # the actor loads through Classifier.load(device=...), i.e. the device policy
    seen: dict = {}
    from zhtune.classifier import Classifier

    real = Classifier.load
    monkeypatch.setattr(Classifier, "load", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    ds.fn(**ds.kw["fn_constructor_kwargs"])
    assert seen["device"] == "cpu"


def test_ray_engine_device_is_passed_through_and_checked(baseline, tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason='--engine ray needs `pip install "ray[data]"`')
    import torch

    import zhtune.integrations.ray as zray

    data = write_csv(tmp_path / "texts.csv", labelled_rows(1))
    args = ["predict", "--model", str(baseline), "--file", str(data), "--engine", "ray"]
    cases = [("cuda:1", "Ray assigns each actor its GPU")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "CUDA is not available"))
    for spec, needle in cases:  # before Ray starts
        assert main([*args, "--device", spec]) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if ": error: " in x]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray started for this
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(zray, "predict_file_ray", lambda *a, **kw: seen.update(kw) or 0)
    assert main([*args, "--device", "cpu"]) == 0 and seen["device"] == "cpu"
    # a cluster without GPUs: one line, not actors waiting for ever
    assert main([*args, "--device", "auto", "--gpus-per-actor", "1", "--ray-address", "x"]) == 2
    assert "the Ray cluster has 0" in capsys.readouterr().err
