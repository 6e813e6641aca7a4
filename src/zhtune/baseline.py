"""TF-IDF (character 1-3 grams) + a linear classifier: the baseline every model must beat.

The fitted pipeline is saved with skops (``model.skops``), which rebuilds only an explicit
list of trusted scikit-learn/numpy types on load: no pickle of user-controlled files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zhtune.config import arg, check, save_config, validate_choices
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ModelLoadError
from zhtune.runs import prepare_out_dir, write_json, write_manifest

log = logging.getLogger("zhtune")
MODEL_FILE = "model.skops"


@dataclass
class BaselineConfig(DataConfig):
    """TF-IDF + linear model."""

    classifier: str = arg("logreg", "linear model", ("logreg", "linearsvc"))
    C: float = arg(10.0, "inverse regularisation strength (LinearSVC: try 0.5)")
    ngram_min: int = arg(1, "smallest character n-gram")
    ngram_max: int = arg(3, "largest character n-gram")
    min_df: int = arg(2, "ignore n-grams seen in fewer documents")
    max_features: int | None = arg(None, "keep at most this many n-grams")
    class_weight: str = arg("balanced", "class weights in the loss", ("balanced", "none"))

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        check(self.C > 0, "C", f"must be > 0, got {self.C}")
        check(
            1 <= self.ngram_min <= self.ngram_max, "ngram_max", "need 1 <= ngram_min <= ngram_max"
        )
        check(self.min_df >= 1, "min_df", f"must be >= 1, got {self.min_df}")


def build_pipeline(cfg: BaselineConfig):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    cw = None if cfg.class_weight == "none" else "balanced"
    if cfg.classifier == "logreg":
        clf = LogisticRegression(C=cfg.C, class_weight=cw, max_iter=2000)
    else:  # LinearSVC has no probabilities: calibrate it (sigmoid, 3-fold)
        clf = CalibratedClassifierCV(LinearSVC(C=cfg.C, class_weight=cw), cv=3)
    vec = TfidfVectorizer(
        analyzer="char",
        ngram_range=(cfg.ngram_min, cfg.ngram_max),
        sublinear_tf=True,
        min_df=cfg.min_df,
        max_features=cfg.max_features,
    )
    return Pipeline([("tfidf", vec), ("clf", clf)])


class BaselineModel:
    """A fitted pipeline and its label names; implements the Classifier backend protocol."""

    def __init__(self, pipeline, labels: list[str]) -> None:
        self.pipeline = pipeline
        self.labels = list(labels)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        return self.pipeline.predict_proba(list(texts))

    def save(self, out: Path) -> None:
        import skops.io as sio

        sio.dump(self.pipeline, out / MODEL_FILE)

    @classmethod
    def load(cls, path: Path) -> BaselineModel:
        import json

        import skops.io as sio

        f = Path(path) / MODEL_FILE
        if not f.is_file():
            raise ModelLoadError(f"{f} not found")
        try:
            untrusted = sio.get_untrusted_types(file=f)
            allowed = [
                t for t in untrusted if t.startswith(("sklearn.", "numpy.", "scipy.sparse."))
            ]
            if set(untrusted) - set(allowed):
                raise ModelLoadError(
                    f"{f}: refusing to load unexpected types {sorted(set(untrusted) - set(allowed))}"
                )
            pipeline = sio.load(f, trusted=allowed)
        except ModelLoadError:
            raise
        except Exception as e:  # skops raises many types on corrupt files
            raise ModelLoadError(f"{f}: cannot load ({type(e).__name__}: {e})") from None
        labels = json.loads((Path(path) / "zhtune.json").read_text(encoding="utf-8"))["labels"]
        return cls(pipeline, labels)


def load_backend(path: Path, manifest: dict, **_: object) -> BaselineModel:
    return BaselineModel.load(path)


def run_baseline(cfg: BaselineConfig, out: str | Path) -> dict:
    """Fit on train, score on test, write the run directory. Returns the test metrics."""
    from zhtune.classifier import Classifier
    from zhtune.evaluation.scoring import write_test_outputs

    out = prepare_out_dir(out)
    save_config(cfg, out)
    splits = load_splits(cfg)
    write_json(out / "data.json", splits.report)
    for w in splits.report["warnings"]:
        log.warning(w)
    labels = list(splits.label_map.names)
    log.info(
        "baseline: %d train / %d dev / %d test rows, labels %s",
        len(splits.train),
        len(splits.dev),
        len(splits.test),
        labels,
    )
    pipe = build_pipeline(cfg)
    t = time.perf_counter()
    # fit on label ids so that predict_proba columns follow the label map
    pipe.fit(splits.train.texts, splits.train.label_ids(splits.label_map))
    train_seconds = time.perf_counter() - t
    model = BaselineModel(pipe, labels)
    model.save(out)
    write_manifest(out, "baseline", labels, classifier=cfg.classifier)
    clf = Classifier(model, "baseline", str(out))
    dev_acc = float(
        np.mean(
            clf.predict_proba(splits.dev.texts).argmax(1) == splits.dev.label_ids(splits.label_map)
        )
    )
    head = pipe[-1]
    params = int(head.coef_.size + head.intercept_.size) if hasattr(head, "coef_") else None
    extra = {
        "model": f"tfidf-{cfg.classifier}",
        "train_seconds": train_seconds,
        "dev_accuracy": dev_acc,
        "parameters": params,
    }
    return write_test_outputs(clf, splits, out, extra=extra)
