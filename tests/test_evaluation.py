"""Metrics against scikit-learn, ECE by hand, temperature scaling, abstention, parameters."""

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from zhtune.classifier import Classifier
from zhtune.errors import ConfigError
from zhtune.evaluation.calibration import (
    apply_temperature,
    confidence_report,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    threshold_for_accuracy,
)
from zhtune.evaluation.evaluate import EvaluateConfig, count_parameters
from zhtune.evaluation.metrics import classification_metrics


def _random_probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)  # every class present
    return probs, y


@pytest.mark.parametrize("k", [2, 4])
def test_metrics_agree_with_sklearn(k):
    probs, y = _random_probs(60, k, seed=k)
    labels = [f"c{i}" for i in range(k)]
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        kw = {"average": avg, "zero_division": 0, "labels": list(range(k))}
        assert m[f"{avg}_precision"] == pytest.approx(precision_score(y, pred, **kw))
        assert m[f"{avg}_recall"] == pytest.approx(recall_score(y, pred, **kw))
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y, pred, **kw))
    f1s = f1_score(y, pred, average=None, labels=list(range(k)), zero_division=0)
    for i, name in enumerate(labels):
        assert m["per_class"][name]["f1"] == pytest.approx(f1s[i])
        assert m["per_class"][name]["support"] == int((y == i).sum())
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    auc = (
        roc_auc_score(y, probs[:, 1])
        if k == 2
        else roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert m["roc_auc"] == pytest.approx(auc)
    assert m["log_loss"] == pytest.approx(log_loss(y, probs), rel=1e-6)


def test_metrics_on_hand_made_predictions():
    # gold: a a b b c ; predicted: a b b b a
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.3, 0.6, 0.1],
            [0.5, 0.2, 0.3],
        ]
    )
    m = classification_metrics([0, 0, 1, 1, 2], probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_ece_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.65 (right), 0.55 (right)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    y = [0, 1, 1, 0]
    # 15 bins: 0.95 -> bin 14 (14/15, 1]; 0.65 -> bin 9 (9/15, 10/15]; 0.55 -> bin 8
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(1 - 0.55)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    bins = reliability_bins(probs, y)
    assert [b["count"] for b in bins if b["count"]] == [1, 1, 2]
    assert bins[14]["accuracy"] == 0.5
    # a confidence exactly on an edge falls into the lower bin (lo, hi]
    edge = np.array([[10 / 15, 5 / 15]])
    assert reliability_bins(edge, [0])[9]["count"] == 1
    assert expected_calibration_error(np.array([[1.0, 0.0]]), [0]) == 0.0


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, then the logits sharpened 3x."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 1.5
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return sharp, y


def test_temperature_scaling_lowers_ece_on_an_overconfident_model():
    dev_p, dev_y = _overconfident(3000, 0)
    test_p, test_y = _overconfident(3000, 1)
    t = fit_temperature(dev_p, dev_y)
    assert 2.5 < t < 3.5  # recovers the sharpening factor
    before = expected_calibration_error(test_p, test_y)
    after = expected_calibration_error(apply_temperature(test_p, t), test_y)
    assert before > 0.1
    assert after < before / 3
    rep = confidence_report(test_p, test_y, dev_p, dev_y)
    assert rep["temperature"] == pytest.approx(t)
    assert rep["ece_calibrated"] == pytest.approx(after)
    assert rep["nll_calibrated"] < rep["nll"]


def test_temperature_matches_the_classifier_transform():
    probs, _ = _random_probs(20, 3, seed=5)

    class Fixed:
        labels = ["a", "b", "c"]

        def predict_proba(self, texts, batch_size=32):
            return probs

    clf = Classifier(Fixed(), "fixed", "mem", temperature=1.7)
    np.testing.assert_allclose(
        clf.predict_proba(["x"] * 20), apply_temperature(probs, 1.7), rtol=1e-9
    )


def test_coverage_curve_and_threshold():
    # confidences 0.9 (right), 0.8 (right), 0.8 (wrong), 0.6 (wrong)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]])
    y = [0, 0, 0, 1]
    curve = coverage_curve(probs, y)
    assert curve["threshold"] == [0.9, 0.8, 0.6]  # ties at 0.8 kept together
    assert curve["coverage"] == [0.25, 0.75, 1.0]
    assert curve["accuracy"] == pytest.approx([1.0, 2 / 3, 0.5])
    hit = threshold_for_accuracy(curve, 0.6)
    assert hit["threshold"] == 0.8 and hit["coverage"] == 0.75
    assert threshold_for_accuracy(curve, 1.0)["threshold"] == 0.9
    # the top prediction is wrong: no threshold reaches 100 %
    none = threshold_for_accuracy(coverage_curve(probs, [1, 0, 0, 1]), 1.0)
    assert none["threshold"] is None and none["coverage"] == 0.0


def test_count_parameters_reads_safetensors_headers(tmp_path):
    from safetensors.numpy import save_file

    save_file(
        {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)},
        tmp_path / "m.safetensors",
    )
    assert count_parameters(tmp_path) == 16
    (tmp_path / "metrics.json").write_text(json.dumps({"parameters": 7}))
    assert count_parameters(tmp_path) == 7  # the trainer's own count wins
    assert count_parameters(tmp_path / "missing") is None


def test_evaluate_config_validation():
    with pytest.raises(ConfigError, match="target_accuracy"):
        EvaluateConfig(dataset="x", target_accuracy=1.5)
    with pytest.raises(ConfigError, match="perturbations"):
        EvaluateConfig(dataset="x", perturbations=["nope"])
    with pytest.raises(ConfigError, match="robustness_rate"):
        EvaluateConfig(dataset="x", robustness_rate=0)
