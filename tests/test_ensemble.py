"""`zhtune ensemble`: simplex weights, stacking, the run directory, loading, evaluate, serve,
compare, and the one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import labelled_rows, write_csv
from zhtune.cli import main
from zhtune.finetune.ensemble import combine, fit_simplex_weights, fit_stack

DATA = ["--dev-ratio", "0.2", "--test-ratio", "0.2"]


def test_weights_sum_to_one_and_match_the_hand_computation() -> None:
    # two dev rows; probability of the true label: member A 0.9 / 0.3, member B 0.5 / 0.6.
    # d/dw of log(0.5 + 0.4 w) + log(0.6 - 0.3 w) = 0  <=>  0.4 (0.6 - 0.3 w) = 0.3 (0.5 + 0.4 w)
    # <=>  w = 0.09 / 0.24 = 0.375 for A (and 0.625 for B)
    a = np.array([[0.1, 0.9], [0.7, 0.3]])
    b = np.array([[0.5, 0.5], [0.4, 0.6]])
    w = fit_simplex_weights([a, b], [1, 1])
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w == pytest.approx([0.375, 0.625], abs=1e-5)
    # a member that is always better on every row takes all the weight
    w = fit_simplex_weights([a, np.array([[0.9, 0.1], [0.9, 0.1]])], [1, 1])
    assert w == pytest.approx([1.0, 0.0], abs=1e-6) and (w >= 0).all()
    combined = combine([a, b], "weighted", np.array([0.375, 0.625]))
    assert combined == pytest.approx(0.375 * a + 0.625 * b)


def test_a_member_with_weight_zero_is_not_run() -> None:
    from zhtune.finetune.ensemble import EnsembleBackend

    class Member:
        def __init__(self, p: list[float] | None) -> None:
            self.p = p

        def predict_proba(self, texts, batch_size=32):
            if self.p is None:
                raise AssertionError("a member with weight 0 was run")
            return np.tile(self.p, (len(texts), 1))

    backend = EnsembleBackend([Member([0.2, 0.8]), Member(None)], ["a", "b"], "weighted",
                              np.array([1.0, 0.0]))  # fmt: skip
    assert backend.predict_proba(["x", "y"]) == pytest.approx(np.array([[0.2, 0.8]] * 2))


def test_stack_of_two_identical_members_equals_that_member() -> None:
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.02, 0.98, 200)
    member = np.stack([1 - p1, p1], 1)
    gold = (rng.uniform(size=200) < p1).astype(int)  # labels drawn from the member: calibrated
    coef, intercept = fit_stack([member, member], gold, 2, C=1.0)
    assert coef.shape == (1, 4) and (intercept == 0).all()
    assert coef[0, :2] == pytest.approx(coef[0, 2:], abs=1e-6)  # the duplicates share the weight
    stacked = combine([member, member], "stack", np.ones(2) / 2, coef, intercept)
    assert (stacked.argmax(1) == member.argmax(1)).all()
    assert stacked.sum(1) == pytest.approx(1.0)
    # fitted without regularisation the stack gives back the calibrated member itself
    coef, intercept = fit_stack([member, member], gold, 2, C=1e6)
    stacked = combine([member, member], "stack", np.ones(2) / 2, coef, intercept)
    assert np.abs(stacked - member).max() < 0.1


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ens")
    data = write_csv(d / "data.csv", labelled_rows(4))
    other = write_csv(d / "other.csv", [(t, "pos" if lbl == "positive" else "neg")
                                        for t, lbl in labelled_rows(4)])  # fmt: skip
    runs = {"data": data, "other_data": other}
    for name, args in {
        "a": ["--C", "10"],
        "b": ["--C", "0.3", "--ngram-max", "1", "--min-df", "1"],
    }.items():
        assert main(["baseline", "--train", str(data), *DATA, "--out", str(d / name), *args]) == 0
        runs[name] = d / name
    assert main(["baseline", "--train", str(other), *DATA, "--out", str(d / "other")]) == 0
    runs["other"] = d / "other"
    return runs


@pytest.mark.parametrize("method", ["weighted", "mean", "stack"])
def test_ensemble_cli_run_directory_and_load(method: str, members: dict, tmp_path: Path) -> None:
    from zhtune import Classifier

    out = tmp_path / "ens"
    rc = main(["ensemble", str(members["a"]), str(members["b"]), "--train", str(members["data"]),
               *DATA, "--method", method, "--out", str(out)])  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "zhtune.json").read_text())
    assert manifest["kind"] == "ensemble" and manifest["method"] == method
    assert manifest["members"] == [str(members["a"].resolve()), str(members["b"].resolve())]
    assert all(Path(m).is_absolute() for m in manifest["members"])
    for f in ("ensemble.safetensors", "ensemble.json", "metrics.json", "predictions.jsonl",
              "confusion_matrix.png", "members.json", "config.yaml", "data.json"):  # fmt: skip
        assert (out / f).is_file(), f
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pickle"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in metrics["members"]] == ["a", "b"]
    for m in metrics["members"]:
        assert 0 <= m["dev_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1
    assert "confusion_matrix" in metrics and 0 <= metrics["accuracy"] <= 1
    clf = Classifier.load(out)
    texts = ["质量很好，物流也快", "完全不能用，失望", "一般般"]
    got = clf.predict_proba(texts)
    pa, pb = (Classifier.load(members[k]).predict_proba(texts) for k in "ab")
    if method != "stack":
        w = np.array([m["weight"] for m in metrics["members"]])
        assert w.sum() == pytest.approx(1.0)
        if method == "mean":
            assert w == pytest.approx([0.5, 0.5])
        assert got == pytest.approx(w[0] * pa + w[1] * pb)
    assert got.sum(1) == pytest.approx(1.0)
    assert clf.predict("质量很好")["label"] in ("negative", "positive")


def test_ensemble_evaluate_serve_and_compare(members: dict, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from zhtune.evaluation.compare import compare_runs
    from zhtune.evaluation.evaluate import EvaluateConfig
    from zhtune.serving.server import ServeSettings, create_app

    out = tmp_path / "ens"
    assert main(["ensemble", str(members["a"]), str(members["b"]), "--out", str(out)]) == 0
    # evaluate: the data settings come from the ensemble's own config.yaml
    assert main(["evaluate", "--model", str(out), "--out", str(tmp_path / "ev"),
                 "--no-robustness"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert 0 <= summary["accuracy"] <= 1
    with TestClient(create_app(ServeSettings(model=str(out)))) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/health").json()["kind"] == "ensemble"
        r = client.post("/v1/classify", json={"texts": ["质量很好", "太差了"]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
    cfg = EvaluateConfig(train=str(members["data"]), dev_ratio=0.2, test_ratio=0.2)
    rows = compare_runs([out], cfg, tmp_path / "cmp", robustness=False)
    names = [r["name"] for r in rows]
    assert names[:3] == ["ens", "a", "b"]  # the members are listed beside the ensemble
    # the ensemble's size is its members' (they all run), in evaluate and in compare
    size = {r["name"]: r["model_bytes"] for r in rows}
    assert size["ens"] >= size["a"] + size["b"] > 0
    assert summary["model_bytes"] == size["ens"]


def test_bad_members_are_one_line_errors(members: dict, tmp_path: Path, capsys) -> None:
    def err(*runs: str) -> str:
        assert main(["ensemble", *runs, "--out", str(tmp_path / "x")]) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1
        return e

    assert "at least two member runs" in err(str(members["a"]))
    assert "not a zhtune run directory" in err(str(members["a"]), str(tmp_path))
    e = err(str(members["a"]), str(members["other"]))
    assert "different label sets" in e and "negative, positive" in e and "neg, pos" in e


def test_export_refuses_an_ensemble_in_one_line(members: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ens"
    assert main(["ensemble", str(members["a"]), str(members["b"]), "--method", "mean",
                 "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", "--model", str(out), "--out", str(tmp_path / "onnx")]) == 2
    e = capsys.readouterr().err.strip()
    assert "kind 'ensemble' cannot be exported" in e and len(e.splitlines()) == 1
