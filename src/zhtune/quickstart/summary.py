"""The quickstart's summary: a table a person reads, a verdict, next steps, report.html."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from zhtune.quickstart.config import QuickstartConfig
from zhtune.runs import write_json

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


TFIDF_RUNS = ("baseline", "baseline-words")  # the rows "other than TF-IDF" leaves out


def compare_to_baseline(rows: list[dict]) -> str:
    """The verdict: best non-TF-IDF model vs TF-IDF, base vs control, constant predictors."""
    by_run = {r.get("run"): r for r in rows}
    base = by_run.get("baseline")
    parts = []
    others = [r for r in rows if r.get("run") not in TFIDF_RUNS]
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
    lora = [by_run[k] for k in ("llm/lora-head", "llm/lora-scoring") if k in by_run]
    if lora:
        met = "met" if all(r["accuracy"] >= 0.75 for r in lora) else "missed"
        accs = " and ".join(f"{r['accuracy']:.3f}" for r in lora)
        parts.append(f"LoRA {'head and scoring' if len(lora) == 2 else 'run'} {accs} "
                     f"(target 0.75 each {met})")  # fmt: skip
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


def write_summary(cfg: QuickstartConfig, out: Path, splits: Any, res: Any, total: float) -> None:
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
