"""Drift: the prediction log written by ``zhtune serve --log-predictions``, and ``zhtune monitor``.

:class:`PredictionLogger` (used by the server) counts every answer in Prometheus (predicted
label, confidence histogram) and, when given a file, appends one JSON line per text through
:class:`logging.handlers.RotatingFileHandler` (rotation by size, ``FILE.1`` ... ``FILE.N``).
The text is stored as its SHA-256 by default (``--log-text hash``), in full, or not at all;
its length in characters is always stored.

``zhtune monitor --log FILE --reference RUN`` compares the logged answers with the reference
run's test predictions (``predictions.jsonl``), per window of N answers and overall:

- label distribution: PSI (population stability index, computed here) and the chi-square
  goodness-of-fit test (scipy) against the reference label shares;
- confidence: two-sample Kolmogorov-Smirnov test (scipy);
- the share of low-confidence answers, against the reference's share;
- text length in characters: two-sample KS test.

A check alarms when its effect size crosses the threshold and (for the tests) the p-value is
below ``--p-value``; the command prints a table, writes ``drift.json`` and ``drift.png`` and
exits 1 on any alarm (for cron/CI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zhtune.errors import DataError, ZhtuneError

TEXT_MODES = ("hash", "full", "none")
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
EPS = 1e-4  # floor for shares in PSI (a label never seen would make it infinite)


# --- the serving side ---------------------------------------------------------------------
class PredictionLogger:
    """Prometheus label/confidence metrics and an optional rotating JSONL prediction log."""

    def __init__(
        self,
        registry: Any = None,
        path: str | Path | None = None,
        text: str = "hash",
        max_bytes: int = 50_000_000,
        backups: int = 5,
        model: str = "",
    ) -> None:
        if text not in TEXT_MODES:
            raise ZhtuneError(f"--log-text must be one of {', '.join(TEXT_MODES)}, got {text!r}")
        if max_bytes < 1 or backups < 0:
            raise ZhtuneError("--log-max-bytes must be >= 1 and --log-backups >= 0")
        self.text, self.model = text, model
        self.handler: logging.Handler | None = None
        self.lock = threading.Lock()
        if path is not None:
            p = Path(path)
            if p.is_dir() or not p.parent.is_dir():
                raise ZhtuneError(f"--log-predictions {p}: not a file in an existing directory")
            self.handler = logging.handlers.RotatingFileHandler(
                p, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.labels_seen = self.confidence = None
        if registry is not None:
            from prometheus_client import Counter, Histogram

            self.labels_seen = Counter(
                "zhtune_predictions", "answers by predicted label", ["label"], registry=registry
            )
            self.confidence = Histogram(
                "zhtune_prediction_confidence",
                "confidence (top probability) of each answer",
                buckets=CONFIDENCE_BUCKETS,
                registry=registry,
            )

    def line(self, text: str, label: str, confidence: float, probs: dict[str, float]) -> str:
        rec: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "model": self.model,
            "label": label,
            "confidence": round(confidence, 6),
            "probs": {k: round(v, 6) for k, v in probs.items()},
            "chars": len(text),
        }
        if self.text == "hash":
            rec["text_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        elif self.text == "full":
            rec["text"] = text
        return json.dumps(rec, ensure_ascii=False)

    def record(self, texts: Sequence[str], labels: Sequence[str], probs: np.ndarray) -> None:
        """One answer per text: metrics always, a log line when a file was given."""
        for text, row in zip(texts, np.asarray(probs), strict=True):
            i = int(row.argmax())
            conf = float(row[i])
            if self.labels_seen is not None and self.confidence is not None:
                self.labels_seen.labels(labels[i]).inc()
                self.confidence.observe(conf)
            if self.handler is not None:
                msg = self.line(
                    text, labels[i], conf, dict(zip(labels, map(float, row), strict=True))
                )
                with self.lock:
                    self.handler.emit(logging.makeLogRecord({"msg": msg}))

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


def logger_for(settings: Any, registry: Any) -> PredictionLogger:
    """The server's logger from its settings (``log_predictions``, ``log_text``, ...)."""
    return PredictionLogger(
        registry,
        getattr(settings, "log_predictions", None),
        getattr(settings, "log_text", "hash"),
        getattr(settings, "log_max_bytes", 50_000_000),
        getattr(settings, "log_backups", 5),
        Path(settings.model).name or str(settings.model),
    )


# --- reading ------------------------------------------------------------------------------
@dataclass
class Answers:
    labels: list[str]
    confidence: np.ndarray
    chars: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def window(self, a: int, b: int) -> Answers:
        return Answers(self.labels[a:b], self.confidence[a:b], self.chars[a:b])


def _parse(line: str) -> tuple[str, float, int]:
    rec = json.loads(line)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    label, conf = rec.get("label"), rec.get("confidence")
    if not isinstance(label, str) or not label:
        raise ValueError("no string field 'label'")
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 0 <= conf <= 1:
        raise ValueError("field 'confidence' must be a number in [0, 1]")
    chars = rec.get("chars")
    if chars is None and isinstance(rec.get("text"), str):
        chars = len(rec["text"])
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 0:
        raise ValueError("no integer field 'chars' (or 'text')")
    return label, float(conf), chars


def read_answers(paths: Sequence[str | Path], on_bad_line: str = "error") -> tuple[Answers, int]:
    """Answers from JSONL files, in order; malformed lines raise FILE:LINE or are counted."""
    labels: list[str] = []
    conf: list[float] = []
    chars: list[int] = []
    skipped = 0
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataError("file not found", str(p))
        with p.open(encoding="utf-8", errors="replace") as fh:
            for no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    lab, c, n = _parse(line)
                except (ValueError, TypeError) as e:
                    if on_bad_line != "skip":
                        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                        raise DataError(
                            f"malformed log line ({reason}; use --on-bad-line skip to skip such lines)",
                            str(p),
                            no,
                        ) from None
                    skipped += 1
                    continue
                labels.append(lab)
                conf.append(c)
                chars.append(n)
    if not labels:
        raise DataError("no answers in the log", ", ".join(map(str, paths)))
    return Answers(labels, np.array(conf), np.array(chars)), skipped


def read_reference(run: str | Path) -> tuple[Answers, list[str]]:
    """The reference run's test predictions and its labels (from zhtune.json)."""
    from zhtune.runs import read_manifest

    p = Path(run)
    preds = p / "predictions.jsonl"
    if not preds.is_file():
        raise ZhtuneError(f"{p}: no predictions.jsonl (give a run directory written by training)")
    ref, _ = read_answers([preds])
    manifest = read_manifest(p) or {}
    labels = [str(x) for x in manifest.get("labels") or sorted(set(ref.labels))]
    return ref, labels


# --- statistics ---------------------------------------------------------------------------
@dataclass
class Thresholds:
    psi: float = 0.2
    p_value: float = 0.01
    ks: float = 0.1
    low_confidence: float = 0.6
    low_share: float = 0.1
    length_ks: float = 0.2
    min_window: int = 30


def shares(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    counts = np.array([sum(1 for x in labels if x == n) for n in names], dtype=np.float64)
    return counts / max(1.0, counts.sum())


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index: sum((a - e) * ln(a / e)) over the shares, floored at EPS."""
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def compare(ref: Answers, cur: Answers, names: list[str], t: Thresholds) -> dict:
    """Every check of one window against the reference; ``alarms`` names the ones crossed."""
    from scipy.stats import chisquare, ks_2samp

    unknown = sorted(set(cur.labels) - set(names))
    names = names + unknown  # labels the reference never predicted count as shift
    e, a = shares(ref.labels, names), shares(cur.labels, names)
    counts = a * len(cur)
    expected = np.clip(e, EPS, None)
    expected = expected / expected.sum() * counts.sum()
    chi = chisquare(counts, expected)
    ks = ks_2samp(cur.confidence, ref.confidence)
    ks_len = ks_2samp(cur.chars, ref.chars)
    low_ref = float(np.mean(ref.confidence < t.low_confidence))
    low_cur = float(np.mean(cur.confidence < t.low_confidence))
    out: dict[str, Any] = {
        "n": len(cur),
        "label_shares": {n: round(float(x), 4) for n, x in zip(names, a, strict=True)},
        "psi": round(psi(e, a), 6),
        "chi2": round(float(chi.statistic), 4),
        "chi2_p": float(chi.pvalue),
        "confidence_ks": round(float(ks.statistic), 4),
        "confidence_ks_p": float(ks.pvalue),
        "mean_confidence": round(float(cur.confidence.mean()), 4),
        "low_confidence_share": round(low_cur, 4),
        "low_confidence_share_reference": round(low_ref, 4),
        "length_ks": round(float(ks_len.statistic), 4),
        "length_ks_p": float(ks_len.pvalue),
        "median_chars": float(np.median(cur.chars)),
        "unknown_labels": unknown,
    }
    alarms = []
    if len(cur) >= t.min_window:
        if (out["psi"] > t.psi and out["chi2_p"] < t.p_value) or unknown:
            alarms.append("label_shift")
        if out["confidence_ks"] > t.ks and out["confidence_ks_p"] < t.p_value:
            alarms.append("confidence_shift")
        if low_cur - low_ref > t.low_share:
            alarms.append("low_confidence")
        if out["length_ks"] > t.length_ks and out["length_ks_p"] < t.p_value:
            alarms.append("length_shift")
    out["alarms"] = alarms
    return out


def monitor(
    ref: Answers, cur: Answers, names: list[str], window: int | None, t: Thresholds
) -> dict:
    """Overall and per-window comparisons (windows of ``window`` answers, in log order)."""
    size = window or len(cur)
    windows = [
        {"start": a, **compare(ref, cur.window(a, a + size), names, t)}
        for a in range(0, len(cur), size)
    ]
    overall = compare(ref, cur, names, t)
    alarms = sorted({x for w in [overall, *windows] for x in w["alarms"]})
    return {
        "reference": {
            "n": len(ref),
            "label_shares": {
                n: round(float(x), 4) for n, x in zip(names, shares(ref.labels, names), strict=True)
            },
            "mean_confidence": round(float(ref.confidence.mean()), 4),
            "median_chars": float(np.median(ref.chars)),
        },
        "thresholds": asdict(t),
        "overall": overall,
        "windows": windows,
        "alarms": alarms,
    }


# --- output -------------------------------------------------------------------------------
def format_table(report: dict) -> str:
    head = "| window | n | PSI | chi2 p | conf KS | low-conf | length KS | alarms |"
    rows = [head, "|" + "---|" * 8]
    for name, w in [("all", report["overall"]), *((str(w["start"]), w) for w in report["windows"])]:
        rows.append(
            f"| {name} | {w['n']} | {w['psi']:.3f} | {w['chi2_p']:.2g} | {w['confidence_ks']:.3f} | "
            f"{w['low_confidence_share']:.3f} | {w['length_ks']:.3f} | {', '.join(w['alarms']) or '-'} |"
        )
    return "\n".join(rows)


def drift_png(report: dict, path: str | Path) -> Path:
    """PSI, confidence KS, low-confidence share and length KS per window, with thresholds."""
    from zhtune import plots

    plots.cjk_font()
    import matplotlib.pyplot as plt

    ws, t = report["windows"], report["thresholds"]
    x = [w["start"] for w in ws]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    panels = [
        ("psi", "标签分布 PSI (label shift)", t["psi"]),
        ("confidence_ks", "置信度 KS (confidence shift)", t["ks"]),
        ("low_confidence_share", "低置信度占比 (low-confidence share)", None),
        ("length_ks", "文本长度 KS (length shift)", t["length_ks"]),
    ]
    for ax, (key, title, limit) in zip(axes.flat, panels, strict=True):
        ax.plot(x, [w[key] for w in ws], marker="o")
        if key == "low_confidence_share":
            limit = report["overall"]["low_confidence_share_reference"] + t["low_share"]
        ax.axhline(limit, color="tab:red", linestyle="--", label="阈值 (threshold)")
        for w in ws:
            if w["alarms"]:
                ax.axvspan(
                    w["start"], w["start"] + max(1, w["n"]) * 0.98, color="tab:red", alpha=0.08
                )
        ax.set_title(title)
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("窗口起点 (window start, answers)")
    fig.suptitle(f"漂移监控 (drift): alarms = {', '.join(report['alarms']) or 'none'}")
    return plots._save(fig, path)


# --- CLI ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Thresholds()
    p.add_argument(
        "--log",
        nargs="+",
        required=True,
        help="prediction log(s) from serve --log-predictions, oldest first",
    )
    p.add_argument(
        "--reference", required=True, help="run directory whose predictions.jsonl is the reference"
    )
    p.add_argument("--window", type=int, help="answers per window (default: the whole log)")
    p.add_argument("--out", default="drift", help="directory for drift.json and drift.png")
    p.add_argument(
        "--on-bad-line", default="error", choices=("error", "skip"), help="malformed log lines"
    )
    p.add_argument("--psi", type=float, default=d.psi, help="label-shift PSI threshold")
    p.add_argument(
        "--p-value", type=float, default=d.p_value, help="significance for chi-square and KS"
    )
    p.add_argument("--ks", type=float, default=d.ks, help="confidence KS-statistic threshold")
    p.add_argument(
        "--low-confidence",
        type=float,
        default=d.low_confidence,
        help="an answer below this confidence is low",
    )
    p.add_argument(
        "--low-share",
        type=float,
        default=d.low_share,
        help="alarm when the low-confidence share rises by more",
    )
    p.add_argument(
        "--length-ks", type=float, default=d.length_ks, help="text-length KS-statistic threshold"
    )
    p.add_argument(
        "--min-window",
        type=int,
        default=d.min_window,
        help="windows with fewer answers never alarm",
    )


def run_cli(ns: argparse.Namespace) -> int:
    from zhtune.runs import write_json

    if ns.window is not None and ns.window < 1:
        raise ZhtuneError(f"--window must be >= 1, got {ns.window}")
    t = Thresholds(
        ns.psi, ns.p_value, ns.ks, ns.low_confidence, ns.low_share, ns.length_ks, ns.min_window
    )
    ref, names = read_reference(ns.reference)
    cur, skipped = read_answers(ns.log, ns.on_bad_line)
    report = monitor(ref, cur, names, ns.window, t)
    report["log"] = {"files": list(ns.log), "answers": len(cur), "skipped_lines": skipped}
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "drift.json", report)
    drift_png(report, out / "drift.png")
    print(format_table(report))
    if skipped:
        print(f"{skipped} malformed log lines skipped", file=sys.stderr)
    verdict = f"ALARM: {', '.join(report['alarms'])}" if report["alarms"] else "no drift alarm"
    print(f"\n{verdict} ({len(cur)} answers vs {len(ref)} reference rows); {out / 'drift.json'}")
    return 1 if report["alarms"] else 0


__all__ = ["PredictionLogger", "compare", "logger_for", "monitor", "psi", "read_answers"]


def add_serve_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    """The ``zhtune serve`` flags of the prediction log (defaults from ServeSettings ``d``)."""
    p.add_argument(
        "--log-predictions",
        metavar="FILE",
        help="append one JSON line per answer to FILE (for `zhtune monitor`); off by default",
    )
    p.add_argument(
        "--log-text",
        default=d.log_text,
        choices=TEXT_MODES,
        help="store each text as its SHA-256 (default), in full, or not at all",
    )
    p.add_argument(
        "--log-max-bytes", type=int, default=d.log_max_bytes, help="rotate the log past this size"
    )
    p.add_argument(
        "--log-backups", type=int, default=d.log_backups, help="rotated log files kept (FILE.1..N)"
    )
