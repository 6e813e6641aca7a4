"""Training-time augmentation: train rows only, deterministic under the seed, counted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import labelled_rows, write_csv
from zhtune.cli import main
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ConfigError
from zhtune.finetune.augment import AugmentConfig, augment_splits, augment_texts, parse_augment


@dataclass
class Cfg(AugmentConfig, DataConfig):
    pass


def _cfg(path: Path, **kw) -> Cfg:
    return Cfg(train=str(path), dev_ratio=0.2, test_ratio=0.2, **kw)


def test_augmentation_touches_train_only_and_is_deterministic(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv", labelled_rows(3))
    cfg = _cfg(data, augment="homophone,swap", augment_copies=2, augment_rate=0.2)
    plain = load_splits(cfg)
    aug = augment_splits(load_splits(cfg), cfg)
    assert aug.dev.texts == plain.dev.texts and aug.test.texts == plain.test.texts
    assert aug.dev.labels == plain.dev.labels and aug.test.labels == plain.test.labels
    n = len(plain.train)
    assert aug.train.texts[:n] == plain.train.texts  # originals first, unchanged
    added = aug.train.texts[n:]
    rep = aug.report["augmentation"]
    assert rep["rows_added"] == len(added) > n and rep["train_rows_after"] == len(aug.train)
    assert rep["rows_added"] + rep["unchanged_dropped"] == 2 * n
    assert sum(rep["added_per_perturbation"].values()) == len(added)
    assert set(rep["added_per_perturbation"]) == {"homophone", "swap"}
    assert not any(t in plain.train.texts for t in added)  # each copy differs from the rows
    made = augment_texts(plain.train.texts, ["homophone", "swap"], 2, 0.2, cfg.seed)
    assert added == [t for _, _, t in made]
    assert aug.train.labels[n:] == [plain.train.labels[i] for i, _, _ in made]  # row's label
    again = augment_splits(load_splits(cfg), cfg)
    assert again.train.texts == aug.train.texts and again.train.labels == aug.train.labels
    reseeded = augment_texts(plain.train.texts, ["homophone", "swap"], 2, 0.2, cfg.seed + 1)
    assert [t for _, _, t in reseeded] != added
    none = augment_splits(plain, _cfg(data))
    assert none is plain and "augmentation" not in plain.report


def test_unknown_augmentation_names_the_allowed_ones() -> None:
    assert parse_augment("synonym, homophone") == ["synonym", "homophone"]
    assert parse_augment("none") == [] and parse_augment("") == []
    with pytest.raises(ConfigError, match="'char_typo'.*allowed: homophone.*synonym"):
        parse_augment("synonym,char_typo")
    with pytest.raises(ConfigError, match="augment_copies"):
        Cfg(dataset="x", augment="swap", augment_copies=0)


@pytest.mark.slow
def test_finetune_cli_counts_augmented_copies_in_data_json(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv", labelled_rows(3))
    out = tmp_path / "run"
    rc = main(["finetune", "--model", "none", "--train", str(data), "--dev-ratio", "0.2",
               "--test-ratio", "0.2", "--hidden-size", "32", "--num-hidden-layers", "1",
               "--num-attention-heads", "2", "--intermediate-size", "64", "--max-steps", "2",
               "--batch-size", "8", "--max-length", "32", "--progress", "false",
               "--report-to", "none", "--augment", "synonym,punct_width",
               "--augment-copies", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "data.json").read_text())
    plain = load_splits(_cfg(data))
    aug = report["augmentation"]
    assert aug["train_rows_before"] == len(plain.train)
    assert aug["train_rows_after"] == len(plain.train) + aug["rows_added"] > len(plain.train)
    assert report["sizes"] == {
        "train": len(plain.train),
        "dev": len(plain.dev),
        "test": len(plain.test),
    }  # dev/test never augmented
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(plain.test)
