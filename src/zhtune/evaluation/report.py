"""One self-contained HTML page (figures embedded as base64 PNG) for one or more evaluations.

``build_report(entries, out_dir, title) -> Path`` writes ``out_dir/report.html``. An entry is
an ``evaluate`` output directory, or a dict with ``eval_dir`` (the rows returned by
``evaluate_model`` and ``compare_runs``). The page opens from disk: no script, no network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Sequence
from pathlib import Path

from zhtune.errors import ZhtuneError

FIGURES = [
    ("reliability.png", "可靠性图 reliability diagram"),
    ("robustness.png", "鲁棒性 robustness"),
    ("confidence_hist.png", "置信度分布 confidence histogram"),
    ("coverage.png", "覆盖率-准确率 accuracy vs coverage"),
]

CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei","PingFang SC","Microsoft YaHei",
 sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;
 margin-top:40px} h3{margin-top:24px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f2f4f7;text-align:center} td.t,th.t{text-align:left;max-width:520px;word-break:break-all}
table#headline td.best{font-weight:bold;background:#e6f4ea}
.figs{display:flex;flex-wrap:wrap;gap:12px} .figs figure{margin:0;flex:1 1 460px}
.figs img{max-width:100%;border:1px solid #eee} .figs>div{flex:0 1 auto} figcaption{font-size:.85em;color:#555}
.muted{color:#666;font-size:.9em} .err{color:#b00020}
"""

HEADLINE = [
    ("name", "model", "t"),
    ("kind", "kind", "t"),
    ("accuracy", "accuracy", "max"),
    ("macro_f1", "macro-F1", "max"),
    ("ece", "ECE", "min"),
    ("ece_calibrated", "ECE (T-scaled)", "min"),
    ("temperature", "T", ""),
    ("robustness_score", "robustness", "max"),
    ("parameters", "parameters", ""),
    ("model_bytes", "size", ""),
    ("texts_per_second", "texts/s (CPU)", "max"),
]
# multi-label runs: set-based scores instead of accuracy (zhtune.evaluation.multilabel_eval)
MULTI_HEADLINE = [
    ("name", "model", "t"),
    ("kind", "kind", "t"),
    ("micro_f1", "micro-F1", "max"),
    ("macro_f1", "macro-F1", "max"),
    ("samples_f1", "samples-F1", "max"),
    ("hamming_loss", "hamming loss", "min"),
    ("subset_accuracy", "subset accuracy", "max"),
    ("roc_auc", "ROC-AUC", "max"),
    ("ece", "ECE (per label)", "min"),
    ("robustness_score", "robustness", "max"),
    ("model_bytes", "size", ""),
    ("texts_per_second", "texts/s (CPU)", "max"),
]
NOTE = (
    "ECE: expected calibration error over equal-width confidence bins (15 by default) "
    "(lower is better); T-scaled: after temperature scaling fitted on the dev split. "
    "Robustness: mean accuracy over the perturbations divided by the clean accuracy "
    "(1.0 = unaffected). texts/s: CPU prediction speed on the test rows."
)
MULTI_NOTE = (
    "Multi-label: each label has its own probability and threshold (tuned on dev). micro-F1 "
    "pools every (row, label) decision, macro-F1 averages the labels, samples-F1 the rows; "
    "hamming loss: share of wrong (row, label) decisions (lower is better); subset accuracy: "
    "share of rows whose label set is exactly right. ECE: mean over labels of each label's "
    "probability as a yes/no forecast. Robustness: mean perturbed micro-F1 / clean micro-F1."
)


def _columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The headline columns: single-label, multi-label, or both when the runs mix."""
    multi = [bool(r.get("multi_label")) for r in rows]
    if not any(multi):
        return HEADLINE
    if all(multi):
        return MULTI_HEADLINE
    keys = {k for k, _, _ in HEADLINE}
    return HEADLINE[:4] + [c for c in MULTI_HEADLINE if c[0] not in keys] + HEADLINE[4:]


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path`` (every file read here holds one), or None when absent."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_jsonl(path: Path, limit: int) -> list[dict]:
    """The first ``limit`` rows of a JSON-lines file ([] when absent)."""
    rows: list[dict] = []
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= limit:
                    break
                if line.strip():
                    rows.append(json.loads(line))
    return rows


def load_entry(entry: dict | str | Path, n_errors: int = 10) -> dict:
    """Everything the report shows for one evaluation directory."""
    row = dict(entry) if isinstance(entry, dict) else {}
    d = Path(row.get("eval_dir") or (entry if not isinstance(entry, dict) else ""))
    if not d or not (d / "metrics.json").is_file():
        raise ZhtuneError(
            f"{d}: not an evaluation directory (no metrics.json); run zhtune evaluate"
        )
    if not row:
        row = _read_json(d / "summary.json") or {}
    row.setdefault("eval_dir", str(d))
    return {
        "row": row,
        "dir": d,
        "metrics": _read_json(d / "metrics.json") or {},
        "confidence": _read_json(d / "confidence.json"),
        "robustness": _read_json(d / "robustness.json"),
        "errors": _read_jsonl(d / "errors.jsonl", n_errors),
        "explanations": _read_jsonl(d / "explanations.jsonl", n_errors),  # zhtune explain --errors
    }


def _fmt(v: object, key: str = "") -> str:
    """A cell value as text: sizes in B/KB/MB/GB, parameters in M, floats to 4 places."""
    if v is None:
        return "–"
    if key == "model_bytes" and isinstance(v, int | float):
        for unit in ("B", "KB", "MB", "GB"):
            if v < 1024 or unit == "GB":
                return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
            v /= 1024
    if key == "parameters" and isinstance(v, int | float):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{int(v):,}"
    if key == "texts_per_second" and isinstance(v, int | float):
        return f"{v:,.0f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _e(v: object, key: str = "") -> str:
    """``_fmt`` escaped for HTML."""
    return html.escape(_fmt(v, key))


def _short(text: str, n: int = 300) -> str:
    """``text`` cut to ``n`` characters (with an ellipsis), escaped for HTML."""
    return html.escape(text if len(text) <= n else text[:n] + "…")


def _img(path: Path, alt: str) -> str:
    """An <img> with the PNG at ``path`` embedded as base64."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """``rows`` hold already-escaped HTML cells; a cell starting with '<td' is used as is."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
        for r in rows
    )
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline(rows: list[dict]) -> str:
    """The headline table, one row per model, the best value of each column in bold."""
    columns = _columns(rows)
    best: dict[str, object] = {}
    for key, _, how in columns:
        vals = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if how in ("max", "min") and len(vals) > 1:
            best[key] = max(vals) if how == "max" else min(vals)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body: list[str] = []
    for r in rows:
        cells: list[str] = []
        for key, _, how in columns:
            cls: list[str] = []
            if how == "t":
                cls.append("t")
            if key in best and r.get(key) == best[key]:
                cls.append("best")
            c = f' class="{" ".join(cls)}"' if cls else ""
            text = _e(r.get(key), key)
            if key == "name":
                text = f'<a href="#m{len(body)}">{text}</a>'
            cells.append(f"<td{c}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="headline"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


METRIC_KEYS = [
    ("accuracy", "accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("macro_f1", "macro F1"),
    ("weighted_precision", "weighted precision"),
    ("weighted_recall", "weighted recall"),
    ("weighted_f1", "weighted F1"),
    ("roc_auc", "ROC-AUC"),
    ("log_loss", "log loss"),
]


def _metric_rows(m: dict, conf: dict | None, rob: dict | None) -> list[list[str]]:
    """(metric, value) rows: the classification metrics, confidence and robustness."""
    metric_rows = [[html.escape(h), _e(m.get(k))] for k, h in METRIC_KEYS]
    if conf:
        ab = conf.get("abstain", {})
        metric_rows += [
            ["average confidence", _e(conf.get("average_confidence"))],
            ["share of confidence &gt; 0.9", _e(conf.get("share_above_0.9"))],
            [f"ECE ({conf.get('n_bins')} bins)", _e(conf.get("ece"))],
            [f"temperature (fitted on {conf.get('fit_split')})", _e(conf.get("temperature"))],
            ["ECE after temperature scaling", _e(conf.get("ece_calibrated"))],
            [
                f"threshold for accuracy ≥ {conf.get('target_accuracy')}",
                _e(ab.get("threshold"))
                + (f" (answers {ab['coverage']:.1%})" if ab.get("threshold") is not None else ""),
            ],
        ]
    if rob:
        metric_rows.append(["robustness score", _e(rob.get("robustness_score"))])
    return metric_rows


MULTI_METRIC_KEYS = [
    ("micro_f1", "micro F1"),
    ("macro_f1", "macro F1"),
    ("samples_f1", "samples F1"),
    ("hamming_loss", "hamming loss"),
    ("subset_accuracy", "subset accuracy (exact label set)"),
    ("roc_auc", "ROC-AUC (mean over labels)"),
    ("ece", "ECE (mean over labels)"),
    ("robustness_score", "robustness score"),
]


def _multi_label_tables(m: dict) -> list[str]:
    """Multi-label: the set metrics, then the per-label table (with thresholds and ECE)."""
    rows = [[html.escape(h), _e(m.get(k))] for k, h in MULTI_METRIC_KEYS]
    per_row = m.get("mean_labels_per_row") or {}
    rows.append(
        ["labels per row (gold / predicted)", f"{_e(per_row.get('gold'))} / "
         f"{_e(per_row.get('predicted'))}"]
    )  # fmt: skip
    keys = ("precision", "recall", "f1", "support", "roc_auc", "ece", "threshold")
    per_label = _table(
        ["label", "precision", "recall", "F1", "support", "ROC-AUC", "ECE", "threshold"],
        [
            [f'<td class="t">{html.escape(c)}</td>'] + [_e(v.get(k)) for k in keys]
            for c, v in m.get("per_class", {}).items()
        ],
        "per-label",
    )
    return [
        '<div class="figs"><div>',
        _table(["metric", "value"], rows, "metrics"),
        "</div><div>",
        per_label,
        "</div></div>",
    ]


def _tables(e: dict) -> list[str]:
    """The metric table, then the per-class table and the confusion matrix, side by side."""
    m = e["metrics"]
    if m.get("multi_label"):
        return _multi_label_tables(m)
    parts = ['<div class="figs"><div>']
    parts.append(_table(["metric", "value"], _metric_rows(m, e["confidence"], e["robustness"])))
    parts.append("</div><div>")
    per_class = m.get("per_class", {})
    parts.append(
        _table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [f'<td class="t">{html.escape(c)}</td>']
                + [_e(v[k]) for k in ("precision", "recall", "f1", "support")]
                for c, v in per_class.items()
            ],
        )
    )
    cm = e["dir"] / "confusion_matrix.png"
    if cm.is_file():
        parts.append(_img(cm, "confusion matrix"))
    parts.append("</div></div>")
    return parts


def _figures(d: Path) -> str:
    """The FIGURES found in ``d``, each with its caption."""
    figs = [
        f"<figure>{_img(d / f, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
        for f, cap in FIGURES
        if (d / f).is_file()
    ]
    return f'<div class="figs">{"".join(figs)}</div>'


def _names(v: object) -> str:
    """A label, or a label set (multi-label) joined with 、, escaped."""
    return html.escape("、".join(v) if isinstance(v, list) else str(v))


def _perturbation_row(pname: str, r: dict) -> list[str]:
    """One row of the robustness table: a scored perturbation with a flip, or a skipped one
    (multi-label runs: micro-F1 instead of accuracy, a flip is any change of the label set)."""
    score = "micro_f1" if "micro_f1" in r else "accuracy"
    if score not in r:
        return [f'<td class="t">{html.escape(pname)}</td>', "skipped", "", "", ""] + [
            f'<td class="t err">{html.escape(r.get("skipped", ""))}</td>'
        ]
    ex = r["examples"][0] if r.get("examples") else None
    example = (
        f"{_short(ex['text'])}<br>→ {_short(ex['perturbed'])}<br>"
        f"<span class='muted'>{_names(ex['clean_pred'])} → "
        f"{_names(ex['perturbed_pred'])} (gold {_names(ex['gold'])})</span>"
        if ex
        else ""
    )
    return [
        f'<td class="t">{html.escape(r.get("description", pname))}</td>',
        _e(r[score]),
        _e(-r["drop"]),
        f"{r['flip_rate']:.1%}",
        f"{r['changed_share']:.1%}" if "changed_share" in r else "–",
        f'<td class="t">{example}</td>',
    ]


def _robustness_parts(rob: dict) -> list[str]:
    """The robustness heading (rows, rate, seed, clean accuracy) and the perturbation table."""
    multi = "clean_micro_f1" in rob
    score = "micro-F1" if multi else "accuracy"
    clean = rob.get("clean_micro_f1" if multi else "clean_accuracy")
    how = "".join(f", {k} {rob[k]}" for k in ("rate", "seed") if k in rob)
    head = (
        f"<h3>鲁棒性 robustness</h3><p class='muted'>{rob.get('n')} rows{how}; clean "
        f"{score} {_e(clean)}</p>"
    )
    rrows = [_perturbation_row(pname, r) for pname, r in rob.get("perturbations", {}).items()]
    table = _table(["perturbation", score, "change", "flipped", "texts changed", "a flip"], rrows)
    return [head, table]


def _multi_label_errors(errors: list[dict]) -> list[str]:
    """Multi-label errors: gold and predicted label sets, the probabilities of the labels
    that differ."""

    def wrong(r: dict) -> str:
        diff = sorted(set(r["gold"]) ^ set(r["labels"]))
        return ", ".join(f"{html.escape(n)} {r['probs'][n]:.3f}" for n in diff)

    return [
        "<h3>最自信的错误 most confident errors</h3>",
        _table(
            ["text", "gold", "predicted", "p of the wrong labels"],
            [
                [
                    f'<td class="t">{_short(r["text"])}</td>',
                    _names(r["gold"]),
                    _names(r["labels"]),
                    f'<td class="t">{wrong(r)}</td>',
                ]
                for r in errors
            ],  # fmt: skip
        ),
    ]


def _errors_parts(errors: list[dict]) -> list[str]:
    """The most confident errors: heading and table."""
    if "labels" in errors[0]:
        return _multi_label_errors(errors)
    return [
        "<h3>最自信的错误 most confident errors</h3>",
        _table(
            ["text", "gold", "predicted", "confidence"],
            [
                [
                    f'<td class="t">{_short(r["text"])}</td>',
                    html.escape(str(r["gold"])),
                    html.escape(str(r["label"])),
                    _e(r["confidence"]),
                ]
                for r in errors
            ],
        ),
    ]


def _coloured(ex: dict) -> str:
    """The text with each word on a background: green pushes toward the (wrong) predicted
    label, red against it; strength follows the score."""
    text, out, pos = ex["text"], [], 0
    top = max((abs(a["score"]) for a in ex["attributions"]), default=0.0) or 1.0
    for a in ex["attributions"]:
        out.append(html.escape(text[pos : a["start"]]))
        alpha = min(1.0, abs(a["score"]) / top) * 0.75
        rgb = "22,163,74" if a["score"] > 0 else "220,38,38"
        word = html.escape(text[a["start"] : a["end"]])
        out.append(
            f'<span style="background:rgba({rgb},{alpha:.2f})" title="{a["score"]:+.4f}">{word}</span>'
        )
        pos = a["end"]
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _explained_parts(explanations: list[dict]) -> list[str]:
    """Word attributions of the most confident errors (written by ``zhtune evaluate`` and
    ``zhtune explain --errors``); multi-label rows explain their most confidently wrong label."""
    method = html.escape(str(explanations[0].get("method", "")))
    multi = "wrong" in explanations[0]
    note = (
        "green: pushes toward the explained label (the most confidently wrong one), red: against it"
        if multi
        else "green: pushes toward the predicted (wrong) label; red: against it"
    )
    head = ["text", "gold", "predicted", "explained label", "p"] if multi else [
        "text", "gold", "predicted", "confidence"]  # fmt: skip
    rows = []
    for x in explanations:
        row = [f'<td class="t">{_coloured(x)}</td>', _names(x.get("gold", ""))]
        if multi:
            row += [_names(x.get("predicted_labels", [])),
                    f'{html.escape(str(x["label"]))}<br><span class="muted">'
                    f'{html.escape(str(x.get("wrong", "")))}</span>']  # fmt: skip
        else:
            row.append(html.escape(str(x["label"])))
        rows.append([*row, _e(x["confidence"])])
    return [
        f"<h3>为什么错 why the most confident errors were made ({method})</h3>",
        f'<p class="muted">{note}; hover a word for its score.</p>',
        _table(head, rows, "explained"),
    ]


def _model_section(i: int, e: dict) -> str:
    """The section of one evaluation: metrics, figures, robustness and errors."""
    row, m, rob = e["row"], e["metrics"], e["robustness"]
    name = row.get("name") or m.get("model") or f"model {i + 1}"
    parts = [f'<section id="m{i}"><h2>{html.escape(str(name))}</h2>']
    parts.append(
        f'<p class="muted">{html.escape(str(m.get("model", "")))} · kind '
        f"{html.escape(str(m.get('kind', '')))} · {m.get('n', '')} {html.escape(str(m.get('split', '')))} rows</p>"
    )
    parts += _tables(e)
    parts.append(_figures(e["dir"]))
    if rob:
        parts += _robustness_parts(rob)
    if e["errors"]:
        parts += _errors_parts(e["errors"])
    if e.get("explanations"):
        parts += _explained_parts(e["explanations"])
    parts.append("</section>")
    return "\n".join(parts)


def build_report(
    entries: Sequence[dict | str | Path], out_dir: str | Path, title: str = "zhtune report"
) -> Path:
    """Write ``out_dir/report.html`` for the given evaluations; returns its path.

    ``entries``: evaluation directories (written by ``zhtune evaluate`` /
    ``evaluate_model``), or the rows returned by ``evaluate_model`` / ``compare_runs``."""
    loaded = [load_entry(e) for e in entries]
    if not loaded:
        raise ZhtuneError("build_report: no evaluations to report")
    rows = [e["row"] for e in loaded]
    multi = [bool(r.get("multi_label")) for r in rows]
    first = loaded[0]["metrics"]
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = [
        "<!DOCTYPE html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{len(rows)} model(s) on the same {first.get("n", "")} '
        f"{html.escape(str(first.get('split', 'test')))} rows · labels "
        f"{html.escape(', '.join(first.get('labels', [])))} · generated {now}</p>",
        _headline(rows),
        *(
            f'<p class="muted">{note}</p>'
            for note, shown in ((NOTE, not all(multi)), (MULTI_NOTE, any(multi)))
            if shown
        ),
    ]
    doc += [_model_section(i, e) for i, e in enumerate(loaded)]
    doc.append("</body></html>")
    out = Path(out_dir) / "report.html"
    out.write_text("\n".join(doc), encoding="utf-8")
    return out
