"""The quickstart's stages, each its own run directory under ``--out``."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zhtune.config import save_config
from zhtune.data import DataConfig, load_splits
from zhtune.errors import ZhtuneError
from zhtune.quickstart.config import QuickstartConfig, precision_of, show_progress
from zhtune.quickstart.summary import write_summary
from zhtune.runs import prepare_out_dir, resolve_model, write_json

log = logging.getLogger("zhtune")

LLM_NAMES = {
    "lora-head": "tiny Qwen2 + LoRA, classifier head",
    "lora-scoring": "tiny Qwen2 + LoRA, label scoring",
    "zero-shot": "tiny Qwen2, zero-shot label scoring",
}


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
        precision=precision_of(cfg),
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


def _train_fields(cfg: QuickstartConfig, model: str, lr: float, dims: dict | None) -> dict:
    """The fine-tuning fields every encoder stage shares (fine-tune, control, student)."""
    return {
        **cfg.data_fields(),
        "model": model,
        **(dims or _dims(cfg, None)),
        "learning_rate": lr,
        "num_train_epochs": cfg.finetune_epochs,
        "max_steps": cfg.finetune_max_steps,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "eval_every": cfg.eval_every,
        "precision": precision_of(cfg),
        "report_to": cfg.report_to,
        "progress": show_progress(cfg),
    }


def run_finetune_stage(
    cfg: QuickstartConfig, model: str, out: Path, lr: float, name: str, dims: dict | None = None
) -> dict:
    """Fine-tune ``model`` (a directory, or none: random weights); its metrics as ``name``."""
    from zhtune.finetune.encoder import FinetuneConfig, run_finetune

    fcfg = FinetuneConfig(**_train_fields(cfg, model, lr, dims), patience=cfg.patience)
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
        if not cfg.skip_ensemble:
            _ensemble_stage(cfg, out, res)
        if not cfg.skip_distill and "ensemble" in res.runs:
            _distill_stage(cfg, out, res)
        if not res.rows:
            raise ZhtuneError("quickstart: every stage is skipped; nothing to do")
        if not cfg.skip_compare and res.runs:
            _compare_stage(cfg, out, res)
    for r in res.rows:
        r["predicted_classes"] = predicted_classes(out / r["run"])
    write_summary(cfg, out, splits, res, time.perf_counter() - t0)
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
    if cfg.skip_word_baseline:
        return
    log.info("quickstart stage: TF-IDF on characters + jieba words")
    bcfg = BaselineConfig(**cfg.data_fields(), features="char+word")
    m = run_baseline(bcfg, out / "baseline-words")
    res.rows.append({**m, "model": "TF-IDF, characters + jieba words", "run": "baseline-words"})
    res.runs["TF-IDF, characters + words"] = out / "baseline-words"


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
        epochs=cfg.llm_epochs,
        overrides={
            "learning_rate": cfg.llm_learning_rate,
            "lora_r": cfg.llm_lora_r,
            "lora_alpha": 2 * cfg.llm_lora_r,
            "max_length": cfg.llm_max_length,
        },
        zero_shot={"label_words": cfg.zero_shot_words(), "calibrate": cfg.zero_shot_calibrate},
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
        if kind != "zero-shot":
            res.runs[name] = out / "llm" / kind
    gc.collect()


def _ensemble_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The trained models combined (out/ensemble; weights fitted on the dev rows)."""
    from zhtune.finetune.ensemble import EnsembleConfig, run_ensemble

    # the weights fitted on the dev rows decide how much each member counts
    rows = [r for r in res.rows if r["run"] in cfg.ensemble_members]
    members = [out / r["run"] for r in rows]
    if len(members) < 2:
        log.info("quickstart: fewer than two trained models, no ensemble")
        return
    log.info("quickstart stage: %s ensemble of %d models", cfg.ensemble_method, len(members))
    ecfg = EnsembleConfig(**cfg.data_fields(), method=cfg.ensemble_method)
    m = run_ensemble(ecfg, members, out / "ensemble")
    names = {"baseline": "TF-IDF", "baseline-words": "TF-IDF words", "finetune": "fine-tuned",
             "scratch": "scratch",
             "llm/lora-head": "LoRA head", "llm/lora-scoring": "LoRA scoring"}  # fmt: skip
    who = " + ".join(names[r["run"]] for r in rows)
    m["train_seconds"] = sum(r.get("train_seconds") or 0 for r in rows)  # it needs them all
    res.rows.append({**m, "model": f"ensemble ({cfg.ensemble_method}): {who}", "run": "ensemble"})
    res.runs["ensemble"] = out / "ensemble"
    gc.collect()


def _distill_stage(cfg: QuickstartConfig, out: Path, res: _Results) -> None:
    """The ensemble distilled into one encoder (out/distill): the base's architecture,
    initialised from the base (or random weights without one)."""
    from zhtune.finetune.distill import DistillConfig, run_distill

    log.info("quickstart stage: distilling the ensemble into one encoder")
    student = res.base or "none"
    dcfg = DistillConfig(
        **_train_fields(cfg, student, cfg.finetune_learning_rate, _dims(cfg, res.base)),
        teacher=str(out / "ensemble"),
        temperature=cfg.distill_temperature,
        alpha=cfg.distill_alpha,
        augment=cfg.distill_augment,
        augment_copies=cfg.distill_augment_copies,
    )
    m = run_distill(dcfg, out / "distill")
    res.rows.append({**m, "model": "one encoder distilled from the ensemble", "run": "distill"})
    res.runs["distilled student"] = out / "distill"
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
            max_robustness_samples=cfg.robustness_samples,
        )
        res.compare_report = "compare/report.html"
    except Exception as e:  # the trained models and their summary must not be lost
        log.error("quickstart: the compare stage failed (%s: %s); the summary is still "
                  "written", type(e).__name__, e)  # fmt: skip
    gc.collect()
