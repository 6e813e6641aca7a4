"""TF-IDF (character 1-3 grams; optionally jieba word 1-2 grams beside them) + a linear
classifier: the baseline every model must beat.

The fitted model is saved as JSON + safetensors (see ``BaselineModel``): no pickle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zhtune.config import arg, check, save_config, validate_choices
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ModelLoadError
from zhtune.runs import MANIFEST, prepare_out_dir, write_json, write_manifest

log = logging.getLogger("zhtune")
FEATURES = ("char", "word", "char+word")
META_FILE = "baseline.json"
WEIGHTS_FILE = "baseline.safetensors"
VECTORIZER_PARAMS = (
    "analyzer",
    "ngram_range",
    "sublinear_tf",
    "min_df",
    "max_features",
    "lowercase",
)


@dataclass
class BaselineConfig(DataConfig):
    """TF-IDF + linear model."""

    C: float = arg(10.0, "inverse regularisation strength of the logistic regression")
    features: str = arg(
        "char",
        "n-gram features: char (character n-grams), word (jieba words, 1..word_ngram_max), "
        "char+word (both, side by side)",
        FEATURES,
    )
    ngram_min: int = arg(1, "smallest character n-gram")
    ngram_max: int = arg(3, "largest character n-gram")
    word_ngram_max: int = arg(2, "largest word n-gram (features word, char+word)")
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
        check(
            self.word_ngram_max >= 1, "word_ngram_max", f"must be >= 1, got {self.word_ngram_max}"
        )


def jieba_words(text: str) -> list[str]:
    """The word analyzer of word n-gram features: jieba's words, whitespace dropped."""
    from zhtune.text import segment

    return [w for w in segment(text) if w.strip()]


def _vectorizer(kind: str, **params):
    """A TF-IDF vectorizer of ``kind`` char or word (jieba) from saved or config params."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind == "word":
        return TfidfVectorizer(**params, tokenizer=jieba_words, token_pattern=None)
    return TfidfVectorizer(**params)


def _vectorizer_params(cfg: BaselineConfig, kind: str) -> dict:
    ngrams = (cfg.ngram_min, cfg.ngram_max) if kind == "char" else (1, cfg.word_ngram_max)
    return {"analyzer": "char" if kind == "char" else "word", "ngram_range": ngrams,
            "sublinear_tf": True, "min_df": cfg.min_df, "max_features": cfg.max_features,
            "lowercase": True}  # fmt: skip


def build_pipeline(cfg: BaselineConfig, multi_label: bool = False):
    """TF-IDF (one vectorizer per feature kind, side by side) + logistic regression;
    multi-label: one-vs-rest (one binary model per label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import FeatureUnion, Pipeline

    cw = None if cfg.class_weight == "none" else "balanced"
    kinds = cfg.features.split("+")
    vecs = [(k, _vectorizer(k, **_vectorizer_params(cfg, k))) for k in kinds]
    vec = vecs[0][1] if kinds == ["char"] else FeatureUnion(vecs)
    lr = LogisticRegression(C=cfg.C, class_weight=cw, max_iter=2000)
    return Pipeline([("tfidf", vec), ("clf", OneVsRestClassifier(lr) if multi_label else lr)])


def _ovr_arrays(clf) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of a fitted one-vs-rest model: one row per label."""
    from zhtune.errors import ZhtuneError

    if not all(hasattr(e, "coef_") for e in clf.estimators_):
        raise ZhtuneError(
            "a label is on every training row or on none; the baseline cannot learn it"
        )
    coef = np.vstack([e.coef_ for e in clf.estimators_])
    return coef, np.concatenate([e.intercept_ for e in clf.estimators_])


def _ovr_from_arrays(coef: np.ndarray, intercept: np.ndarray):
    """A fitted ``OneVsRestClassifier`` of logistic regressions, rebuilt from its arrays."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import LabelBinarizer

    estimators = []
    for i in range(coef.shape[0]):
        lr = LogisticRegression()
        lr.coef_, lr.intercept_ = coef[i : i + 1], intercept[i : i + 1]
        lr.classes_, lr.n_features_in_ = np.arange(2), coef.shape[1]
        estimators.append(lr)
    ovr = OneVsRestClassifier(LogisticRegression())
    ovr.estimators_ = estimators
    ovr.label_binarizer_ = LabelBinarizer(sparse_output=True).fit(np.eye(coef.shape[0], dtype=int))
    ovr.classes_ = np.arange(coef.shape[0])
    ovr.n_features_in_ = coef.shape[1]
    return ovr


class BaselineModel:
    """A fitted TF-IDF + logistic-regression pipeline and its label names.

    Saved in a format of our own, with no pickle: ``baseline.json`` (vectorizer settings and
    the n-gram vocabulary in index order) and ``baseline.safetensors`` (idf, coefficients,
    intercepts). Loading rebuilds the scikit-learn objects from those arrays.
    """

    def __init__(self, pipeline, labels: list[str]) -> None:
        self.pipeline = pipeline
        self.labels = list(labels)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        return self.pipeline.predict_proba(list(texts))

    def save(self, out: Path) -> None:
        """``baseline.json``: format 1 = one char vectorizer (``vectorizer``, ``vocabulary``);
        format 2 = several (``vectorizers``: kind, params, vocabulary), arrays ``idf.KIND``."""
        from safetensors.numpy import save_file

        vec, clf = self.pipeline.named_steps["tfidf"], self.pipeline.named_steps["clf"]
        multi = hasattr(clf, "estimators_")
        coef, intercept = _ovr_arrays(clf) if multi else (clf.coef_, clf.intercept_)
        arrays = {"coef": coef, "intercept": intercept}
        parts = vec.transformer_list if hasattr(vec, "transformer_list") else [("char", vec)]
        described = []
        for kind, v in parts:
            described.append({"kind": kind, "vectorizer": {k: v.get_params()[k] for k in VECTORIZER_PARAMS},
                              "vocabulary": sorted(v.vocabulary_, key=v.vocabulary_.__getitem__)})  # fmt: skip
            arrays[f"idf.{kind}"] = v.idf_
        if len(parts) == 1 and parts[0][0] == "char":
            meta = {"format": 1, "vectorizer": described[0]["vectorizer"],
                    "vocabulary": described[0]["vocabulary"], "multi_label": multi}  # fmt: skip
            arrays["idf"] = arrays.pop("idf.char")
        else:
            meta = {"format": 2, "vectorizers": described, "multi_label": multi}
        write_json(out / META_FILE, meta)
        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
            str(out / WEIGHTS_FILE),
        )

    @classmethod
    def load(cls, path: Path) -> BaselineModel:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        path = Path(path)
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            arrays = load_file(str(path / WEIGHTS_FILE))
            labels = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["labels"]
            if meta.get("format", 1) == 1:
                meta = {**meta, "vectorizers": [{"kind": "char", **meta}]}
                arrays = {**arrays, "idf.char": arrays["idf"]}
            vecs = []
            for part in meta["vectorizers"]:
                params = {k: part["vectorizer"][k] for k in VECTORIZER_PARAMS}
                params["ngram_range"] = tuple(params["ngram_range"])
                if part["kind"] not in ("char", "word"):
                    raise ValueError(f"unknown vectorizer kind {part['kind']!r}")
                v = _vectorizer(part["kind"], **params)
                v.vocabulary_ = {t: i for i, t in enumerate(part["vocabulary"])}
                v.idf_ = arrays[f"idf.{part['kind']}"]
                if v.idf_.shape != (len(v.vocabulary_),):
                    raise ValueError(f"idf.{part['kind']} does not match its vocabulary")
                vecs.append((part["kind"], v))
            coef, intercept = arrays["coef"], arrays["intercept"]
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            raise ModelLoadError(
                f"{path}: cannot load the baseline model ({type(e).__name__}: {e})"
            ) from None
        n_classes = len(labels)
        multi = bool(meta.get("multi_label"))
        n_features = sum(len(v.vocabulary_) for _, v in vecs)
        if coef.shape[1] != n_features or coef.shape[0] != (
            1 if n_classes == 2 and not multi else n_classes
        ):
            raise ModelLoadError(
                f"{path}: baseline arrays do not match the vocabulary or the {n_classes} labels"
            )
        vec = vecs[0][1] if len(vecs) == 1 and vecs[0][0] == "char" else FeatureUnion(vecs)
        if multi:
            return cls(
                Pipeline([("tfidf", vec), ("clf", _ovr_from_arrays(coef, intercept))]), labels
            )
        clf = LogisticRegression()
        clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, np.arange(n_classes)
        clf.n_features_in_ = n_features
        return cls(Pipeline([("tfidf", vec), ("clf", clf)]), labels)


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
    multi = splits.multi_label
    pipe = build_pipeline(cfg, multi)
    t = time.perf_counter()
    # fit on label ids (multi-label: the 0/1 matrix) so predict_proba columns follow the map
    y = splits.train.label_matrix(splits.label_map) if multi else None
    pipe.fit(splits.train.texts, y if multi else splits.train.label_ids(splits.label_map))
    train_seconds = time.perf_counter() - t
    # stop_words_ holds every pruned n-gram: only needed for introspection, and it made the
    # saved model hundreds of MB (scikit-learn's docs suggest deleting it before saving).
    vec = pipe.named_steps["tfidf"]
    for _, v in getattr(vec, "transformer_list", [("char", vec)]):
        v.stop_words_ = None
    BaselineModel(pipe, labels).save(out)
    write_manifest(out, "baseline", labels)
    model = BaselineModel.load(out)  # score what was saved, so the format is checked every run
    head = pipe.named_steps["clf"]
    extra: dict = {
        "model": "tfidf-logreg"
        + ("" if cfg.features == "char" else f"-{cfg.features}")
        + ("-ovr" if multi else ""),
        "train_seconds": train_seconds,
    }
    if multi:
        from zhtune.evaluation.thresholds import decide

        dev_y = splits.dev.label_matrix(splits.label_map)
        cuts = decide(dev_y, model.predict_proba(splits.dev.texts), labels, cfg.threshold)
        write_manifest(out, "baseline", labels, multi_label=True, thresholds=cuts)
        coef, intercept = _ovr_arrays(head)
        extra["parameters"] = int(coef.size + intercept.size)
        clf = Classifier.load(out)
    else:
        clf = Classifier(model, "baseline", str(out))
        dev_pred = clf.predict_proba(splits.dev.texts).argmax(1)
        extra["dev_accuracy"] = float(np.mean(dev_pred == splits.dev.label_ids(splits.label_map)))
        extra["parameters"] = int(head.coef_.size + head.intercept_.size)
    return write_test_outputs(clf, splits, out, extra=extra)
