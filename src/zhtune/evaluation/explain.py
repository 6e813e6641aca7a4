"""``zhtune explain``: which words (or characters) made a model decide what it decided.

Two methods, both scored toward one label (the predicted one unless ``--label`` is given):

- ``ig``: integrated gradients (captum ``LayerIntegratedGradients`` on the input-embedding
  layer) for models that expose a PyTorch ``model`` and a fast ``tokenizer`` (kinds
  ``encoder`` and ``lora-head``). The baseline input keeps the special tokens and replaces
  every other token with ``[PAD]``; a token's score is its attribution summed over the
  embedding dimensions, in logit units, and a word's score the sum over its tokens. By
  completeness the scores add up to ``logit(text) - logit(baseline)``; the gap captum
  reports is returned as ``delta``.
- ``occlusion``: remove each unit (jieba word or character) and measure how much the
  label's probability drops (``p(text) - p(text without the unit)``). Works for every kind
  through :class:`~zhtune.classifier.Classifier` (TF-IDF, label scoring and ONNX included).

``--json`` prints ``{"label": ..., "attributions": [{"text", "start", "end", "score"}, ...]}``
per text (a list for several texts).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.errors import ZhtuneError

METHODS = ("auto", "ig", "occlusion")
IG_KINDS = ("encoder", "lora-head")


@dataclass
class Explanation:
    text: str
    label: str
    confidence: float
    method: str
    attributions: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "label": self.label,
            "confidence": self.confidence,
            "method": self.method,
            "attributions": self.attributions,
            **self.extra,
        }


def unit_spans(text: str, unit: str) -> list[tuple[int, int]]:
    """Character spans of the jieba words (``word``) or of the characters (``char``)."""
    from zhtune.text import word_spans

    if unit == "char":
        return [(i, i + 1) for i, c in enumerate(text) if c.strip()]
    return word_spans(text)


def _items(text: str, spans: list[tuple[int, int]], scores: np.ndarray) -> list[dict]:
    return [
        {"text": text[s:e], "start": s, "end": e, "score": round(float(v), 6)}
        for (s, e), v in zip(spans, scores, strict=True)
    ]


def _check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ZhtuneError("cannot explain an empty text: give at least one non-blank character")
    return text


def _target(clf: Any, probs: np.ndarray, label: str | None) -> int:
    if label is None:
        return int(probs.argmax())
    if label not in clf.labels:
        raise ZhtuneError(
            f"--label {label!r} is not one of the model's labels: {', '.join(clf.labels)}"
        )
    return clf.labels.index(label)


def occlusion(clf: Any, text: str, label: str | None = None, unit: str = "word") -> Explanation:
    """Probability drop of the target label when each unit is removed (any model kind)."""
    text = _check_text(text)
    spans = unit_spans(text, unit)
    variants = [text[:s] + text[e:] for s, e in spans]
    probs = clf.predict_proba([text, *variants])  # (1 + n_units, n_labels)
    t = _target(clf, probs[0], label)
    scores = probs[0, t] - probs[1:, t]
    return Explanation(
        text,
        clf.labels[t],
        float(probs[0, t]),
        "occlusion",
        _items(text, spans, scores),
        {"predicted": clf.labels[int(probs[0].argmax())]},
    )


def supports_ig(clf: Any) -> bool:
    backend = getattr(clf, "backend", None)
    tok = getattr(backend, "tokenizer", None)
    return (
        clf.kind in IG_KINDS
        and hasattr(backend, "model")
        and hasattr(getattr(backend, "model", None), "get_input_embeddings")
        and bool(getattr(tok, "is_fast", False))
        and not getattr(backend, "int8", False)
    )


def _baseline_id(tok: Any, model: Any) -> int:
    """[PAD] for encoders; decoders that pool at the last non-pad token get another filler."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if getattr(model.config, "is_decoder", False) or not hasattr(model.config, "type_vocab_size"):
        unk = getattr(tok, "unk_token_id", None)
        if unk is not None and unk != pad:
            return int(unk)
    return int(pad)


def integrated_gradients(
    clf: Any, text: str, label: str | None = None, unit: str = "word", steps: int = 50
) -> Explanation:
    """Integrated gradients on the input embeddings, summed per unit (logit units)."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from zhtune.text import word_ids_from_offsets

    text = _check_text(text)
    if not supports_ig(clf):
        raise ZhtuneError(
            f"--method ig needs a PyTorch encoder or LoRA-head model with a fast tokenizer "
            f"(this is a {clf.kind} model); use --method occlusion"
        )
    backend = clf.backend
    model, tok = backend.model, backend.tokenizer
    enc = tok(
        text,
        truncation=True,
        max_length=int(getattr(backend, "max_length", 128)),
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    device = next(model.parameters()).device
    ids = torch.tensor([enc["input_ids"]], device=device)  # (1, T)
    mask = torch.ones_like(ids)
    special = [bool(x) for x in enc["special_tokens_mask"]]
    base = ids.clone()
    base[0, [i for i, s in enumerate(special) if not s]] = _baseline_id(tok, model)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        return (out.logits if hasattr(out, "logits") else out[0]).float()

    with torch.no_grad():
        logits = forward(ids, mask)[0]
        base_logits = forward(base, mask)[0]
    if getattr(clf, "multi_label", False):  # independent probabilities: one sigmoid per label
        probs = torch.sigmoid(logits).cpu().numpy()
    else:
        probs = torch.softmax(logits / clf.temperature, -1).cpu().numpy()
    t = _target(clf, probs, label)
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attr, delta = lig.attribute(
        ids,
        baselines=base,
        additional_forward_args=(mask,),
        target=t,
        n_steps=steps,
        internal_batch_size=max(1, min(steps, 64)),
        return_convergence_delta=True,
    )
    per_token = attr.sum(-1)[0].detach().float().cpu().numpy()  # (T,)
    spans = unit_spans(text, unit)
    owner = word_ids_from_offsets([tuple(o) for o in enc["offset_mapping"]], spans, special)
    scores = np.zeros(len(spans))
    for i, w in enumerate(owner):
        if w is not None and w < len(spans):
            scores[w] += per_token[i]
    return Explanation(
        text,
        clf.labels[t],
        float(probs[t]),
        "ig",
        _items(text, spans, scores),
        {
            "predicted": clf.labels[int(probs.argmax())],
            "logit": float(logits[t]),
            "baseline_logit": float(base_logits[t]),
            "attribution_sum": float(per_token.sum()),
            "delta": float(delta.abs().max()),
            "steps": steps,
        },
    )


def explain(
    clf: Any,
    text: str,
    method: str = "auto",
    label: str | None = None,
    unit: str = "word",
    steps: int = 50,
) -> Explanation:
    """One explanation; ``auto`` is integrated gradients where the model allows it."""
    if method not in METHODS:
        raise ZhtuneError(f"unknown method {method!r}; use {', '.join(METHODS)}")
    if method == "ig" or (method == "auto" and supports_ig(clf)):
        return integrated_gradients(clf, text, label, unit, steps)
    return occlusion(clf, text, label, unit)


# --- terminal output ----------------------------------------------------------------------
def highlight(ex: Explanation, color: bool = True) -> str:
    """The text with each unit coloured by its score: green supports the label, red opposes.

    Without colour, the three strongest supporting units are marked with 【】."""
    scores = [a["score"] for a in ex.attributions]
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    strong = sorted(range(len(scores)), key=lambda i: -scores[i])[:3]
    out, pos = [], 0
    for i, a in enumerate(ex.attributions):
        out.append(ex.text[pos : a["start"]])
        piece = ex.text[a["start"] : a["end"]]
        level = min(5, int(round(abs(a["score"]) / top * 5)))
        if color and level:
            code = (
                (22, 28, 34, 40, 46)[level - 1]
                if a["score"] > 0
                else (52, 88, 124, 160, 196)[level - 1]
            )
            piece = f"\x1b[48;5;{code}m\x1b[97m{piece}\x1b[0m"
        elif not color and i in strong and a["score"] > 0:
            piece = f"【{piece}】"
        out.append(piece)
        pos = a["end"]
    out.append(ex.text[pos:])
    return "".join(out)


def format_explanation(ex: Explanation, color: bool, top: int = 5) -> str:
    lines = [f"→ {ex.label} ({ex.confidence:.3f}) by {ex.method}", "  " + highlight(ex, color)]
    ranked = sorted(ex.attributions, key=lambda a: -abs(a["score"]))[:top]
    lines += [f"    {a['text']:<8} {a['score']:+.4f}" for a in ranked]
    if "delta" in ex.extra:
        lines.append(
            f"  sum {ex.extra['attribution_sum']:+.4f} = logit {ex.extra['logit']:+.4f} - baseline "
            f"{ex.extra['baseline_logit']:+.4f} (completeness gap {ex.extra['delta']:.2g})"
        )
    return "\n".join(lines)


# --- the HTML report -----------------------------------------------------------------------
def _worst_label(row: dict) -> tuple[str, str]:
    """A multi-label error row's most confidently wrong label and how it is wrong: the
    predicted label with the highest probability outside the gold set, else the gold label
    the model gave the lowest probability."""
    gold, probs = set(row["gold"]), row["probs"]
    extra = [n for n in row["labels"] if n not in gold]
    if extra:
        return max(extra, key=lambda n: probs[n]), "predicted, not in the gold set"
    missed = [n for n in gold if n not in row["labels"]]
    return min(missed, key=lambda n: probs[n]), "in the gold set, not predicted"


def error_explanations(
    clf: Any,
    errors: Path,
    n: int = 5,
    method: str = "auto",
    unit: str = "word",
    steps: int = 50,
    max_units: int | None = None,
) -> list[dict]:
    """Explanations of the first ``n`` rows of ``errors`` (an ``errors.jsonl``, most confident
    first) toward the predicted label; for a multi-label row, toward its most confidently wrong
    label (:func:`_worst_label`). With ``max_units``, occlusion skips rows with more units."""
    rows: list[dict] = []
    with errors.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if len(rows) >= n:
                break
            try:
                r = json.loads(line)
                text, gold = r["text"], r["gold"]
                label, why = _worst_label(r) if "labels" in r else (r["label"], "")
            except (ValueError, KeyError, TypeError):
                raise ZhtuneError(f"{errors}:{no}: not an errors.jsonl row") from None
            occluding = method == "occlusion" or (method == "auto" and not supports_ig(clf))
            if max_units is not None and occluding and len(unit_spans(text, unit)) > max_units:
                continue  # one forward pass per unit: too costly here
            ex = explain(clf, text, method, label, unit, steps)
            row = {**ex.to_dict(), "gold": gold}
            if why:
                row.update(predicted_labels=r["labels"], wrong=why)
            rows.append(row)
    return rows


def explain_errors(
    clf: Any, eval_dir: str | Path, n: int = 5, method: str = "auto", unit: str = "word"
) -> Path:
    """Explain the ``n`` most confident errors of an evaluation (``errors.jsonl``) toward the
    predicted label; write ``explanations.jsonl`` and rebuild its ``report.html``."""
    from zhtune.evaluation.report import build_report
    from zhtune.runs import write_jsonl

    d = Path(eval_dir)
    errors = d / "errors.jsonl"
    if not errors.is_file():
        raise ZhtuneError(f"{d}: no errors.jsonl (give a directory written by zhtune evaluate)")
    write_jsonl(d / "explanations.jsonl", error_explanations(clf, errors, n, method, unit))
    summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    return build_report([summary], d, title=f"zhtune evaluate: {summary.get('name', d.name)}")


# --- CLI ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory or model directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to explain (repeat for several)")
    src.add_argument("--file", help="texts to explain (.txt one a line, .csv/.tsv/.jsonl)")
    src.add_argument(
        "--errors",
        metavar="EVAL_DIR",
        help="explain the most confident errors of a `zhtune evaluate` directory; adds them "
        "to its report.html",
    )
    p.add_argument(
        "--method",
        default="auto",
        choices=METHODS,
        help="attribution method (default: ig where possible)",
    )
    p.add_argument("--label", help="explain this label instead of the predicted one")
    p.add_argument(
        "--unit", default="word", choices=("word", "char"), help="jieba words or characters"
    )
    p.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
    p.add_argument("--json", action="store_true", help="print JSON instead of highlighted text")
    p.add_argument(
        "--color", default="auto", choices=("auto", "always", "never"), help="ANSI colours"
    )
    p.add_argument("--text-column", default="text", help="text column / JSON field of --file")
    p.add_argument(
        "--on-bad-row", default="error", choices=("error", "skip"), help="malformed rows of --file"
    )
    p.add_argument("--calibrated", action="store_true", help="apply the fitted temperature")
    p.add_argument("--top-errors", type=int, default=5, help="with --errors: how many rows")


def _texts(ns: argparse.Namespace) -> list[str]:
    if ns.text:
        return [_check_text(t) for t in ns.text]
    from zhtune.data.readers import BadRows, read_file

    bad = BadRows(ns.on_bad_row)
    rows = read_file(ns.file, ns.text_column, bad=bad, need_label=False)
    if bad.counts:
        print(
            f"{sum(bad.counts.values())} malformed rows skipped: {dict(bad.counts)}",
            file=sys.stderr,
        )
    return [r.text for r in rows]


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.classifier import Classifier

    if ns.steps < 2:
        raise ZhtuneError(f"--steps must be at least 2, got {ns.steps}")
    texts = [] if ns.errors else _texts(ns)
    clf = Classifier.load(ns.model, calibrated=ns.calibrated)
    if ns.errors:
        report = explain_errors(clf, ns.errors, ns.top_errors, ns.method, ns.unit)
        print(f"explanations of the {ns.top_errors} most confident errors added to {report}")
        return 0
    if ns.method == "ig" and not supports_ig(clf):
        explain(clf, texts[0], "ig")  # raises the one-line error
    exs = [explain(clf, t, ns.method, ns.label, ns.unit, ns.steps) for t in texts]
    if ns.json:
        body: Any = [e.to_dict() for e in exs] if len(exs) > 1 else exs[0].to_dict()
        print(json.dumps(body, ensure_ascii=False))
        return 0
    color = ns.color == "always" or (ns.color == "auto" and sys.stdout.isatty())
    print("\n\n".join(format_explanation(e, color) for e in exs))
    return 0
