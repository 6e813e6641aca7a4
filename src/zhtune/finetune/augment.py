"""Training-time augmentation: extra copies of the training rows made with the Chinese
perturbations that robustness evaluation uses (``zhtune.evaluation.perturb``; one
implementation of each perturbation).

``--augment synonym,homophone`` ``--augment-copies N`` ``--augment-rate R``: every training
row gets N extra copies; copy ``c`` of row ``i`` uses the perturbation
``names[(i * N + c) % len(names)]`` at rate R, with its own generator seeded by
(seed, copy, perturbation, row), so the same config always gives the same rows. A copy that
comes out identical to its row (e.g. no synonym found) is dropped. Dev and test rows are
never touched; ``data.json`` gets an ``augmentation`` block with the counts.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from zhtune.config import arg, check
from zhtune.data import Split, Splits
from zhtune.errors import ConfigError


def parse_augment(spec: str | None) -> list[str]:
    """``"synonym,homophone"`` -> the names; ConfigError naming the allowed ones otherwise."""
    from zhtune.evaluation.perturb import PERTURBATIONS

    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in PERTURBATIONS]
    if bad:
        raise ConfigError(
            f"config field 'augment': unknown augmentation {', '.join(map(repr, bad))}; "
            f"allowed: {', '.join(PERTURBATIONS)}"
        )
    return list(dict.fromkeys(names))


@dataclass
class AugmentConfig:
    """The ``--augment*`` fields; mixed into the configs of the training commands."""

    augment: str = arg(
        "none", "comma list of perturbations for extra training copies (e.g. synonym,homophone)"
    )
    augment_copies: int = arg(1, "augmented copies of each training row (with --augment)")
    augment_rate: float = arg(0.1, "share of positions each augmented copy changes")

    def __post_init__(self) -> None:
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()
        parse_augment(self.augment)
        check(
            self.augment_copies >= 1, "augment_copies", f"must be >= 1, got {self.augment_copies}"
        )
        check(
            0 < self.augment_rate <= 1,
            "augment_rate",
            f"must be in (0, 1], got {self.augment_rate}",
        )


def augment_texts(
    texts: list[str], names: list[str], copies: int, rate: float, seed: int
) -> list[tuple[int, str, str]]:
    """(source row, perturbation, new text) for every copy that differs from its row."""
    from zhtune.evaluation.perturb import PERTURBATIONS

    out = []
    for i, text in enumerate(texts):
        for c in range(copies):
            name = names[(i * copies + c) % len(names)]
            rng = random.Random(f"{seed}:augment{c}:{name}:{i}")
            new = PERTURBATIONS[name](text, rate, rng)
            if new != text and new.strip():
                out.append((i, name, new))
    return out


def augment_splits(splits: Splits, cfg: Any) -> Splits:
    """``splits`` with augmented copies appended to train (dev/test unchanged, same objects);
    the report gains an ``augmentation`` block. No-op when ``cfg.augment`` is none."""
    names = parse_augment(getattr(cfg, "augment", None))
    if not names:
        return splits
    train = splits.train
    made = augment_texts(train.texts, names, cfg.augment_copies, cfg.augment_rate, cfg.seed)
    new_train = Split(
        texts=[*train.texts, *(t for _, _, t in made)],
        labels=[*train.labels, *(train.labels[i] for i, _, _ in made)],
    )
    report = dict(splits.report)
    report["augmentation"] = {
        "perturbations": names,
        "copies": cfg.augment_copies,
        "rate": cfg.augment_rate,
        "seed": cfg.seed,
        "train_rows_before": len(train),
        "rows_added": len(made),
        "unchanged_dropped": len(train) * cfg.augment_copies - len(made),
        "train_rows_after": len(new_train),
        "added_per_perturbation": dict(Counter(n for _, n, _ in made)),
        "dev_and_test": "not augmented",
    }
    return replace(splits, train=new_train, report=report)
