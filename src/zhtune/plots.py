"""Every matplotlib figure, and CJK font handling in one place.

Chinese label names need a CJK font. We look for one among the installed fonts
(Debian: ``fonts-wqy-microhei`` or ``fonts-noto-cjk``; ``make`` installs one when it can)
and say clearly in the log when none is found.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger("zhtune")

CJK_FONTS = (
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "AR PL UMing CN",
    "Droid Sans Fallback",
)


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Name of an installed CJK font, configured as matplotlib's sans-serif; None if absent."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FONTS:
        if name in installed:
            matplotlib.rcParams["font.sans-serif"] = [name, "DejaVu Sans"]
            matplotlib.rcParams["font.family"] = "sans-serif"
            matplotlib.rcParams["axes.unicode_minus"] = False
            return name
    log.warning(
        "no CJK font found: Chinese text in figures will show as boxes. Install one, e.g. "
        "`apt-get install fonts-wqy-microhei` (Debian/Ubuntu) or `fonts-noto-cjk`."
    )
    return None


def _save(fig: Figure, path: str | Path) -> Path:
    """Lay out, write (110 dpi) and close ``fig``; returns the path."""
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def confusion_matrix_png(
    cm: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    title: str = "混淆矩阵 (confusion matrix)",
) -> Path:
    """Heat map of the confusion matrix (rows gold, columns predicted) with the counts."""
    cjk_font()
    mat = np.asarray(cm)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n, 1.8 + 0.8 * n))
    ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("预测 predicted")
    ax.set_ylabel("真实 gold")
    ax.set_title(title)
    hi = mat.max() / 2 if mat.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(mat[i, j]),
                ha="center",
                va="center",
                color="white" if mat[i, j] > hi else "black",
            )
    return _save(fig, path)


def per_class_png(
    per_class: dict[str, dict], path: str | Path, title: str = "各类别指标 (per class)"
) -> Path:
    """A table figure: precision, recall, F1 and support per class."""
    cjk_font()
    names = list(per_class)
    cells = [
        [
            f"{per_class[n]['precision']:.3f}",
            f"{per_class[n]['recall']:.3f}",
            f"{per_class[n]['f1']:.3f}",
            str(per_class[n]["support"]),
        ]
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.4 * len(names)))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=names,
        colLabels=["precision", "recall", "F1", "support"],
        loc="center",
        cellLoc="center",
    )
    table.scale(1, 1.4)
    ax.set_title(title)
    return _save(fig, path)


def curves_png(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    ylabel: str = "",
    secondary: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    secondary_label: str = "",
) -> Path:
    """Line plot of named (x, y) series, optionally with a second y axis."""
    cjk_font()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, marker="." if len(x) < 40 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for i, (name, (x, y)) in enumerate(secondary.items()):
            ax2.plot(x, y, label=name, color=f"C{len(series) + i}", marker="o", linestyle="--")
        ax2.set_ylabel(secondary_label)
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    if handles:
        ax.legend(handles, names, loc="best")
    return _save(fig, path)


def training_curves_png(
    train_loss: tuple[Sequence[float], Sequence[float]],
    dev_loss: tuple[Sequence[float], Sequence[float]],
    dev_metric: tuple[Sequence[float], Sequence[float]],
    path: str | Path,
    *,
    metric_name: str = "macro_f1",
    title: str = "训练曲线 (training curves)",
) -> Path:
    """Train and dev loss (left axis) and a dev metric (right axis) against the epoch."""
    return curves_png(
        {"train loss": train_loss, "dev loss": dev_loss},
        path,
        xlabel="epoch",
        ylabel="loss",
        title=title,
        secondary={f"dev {metric_name}": dev_metric},
        secondary_label=f"dev {metric_name}",
    )


# --- evaluation: confidence, calibration, robustness -------------------------------------
def confidence_histogram_png(
    confidence: Sequence[float],
    correct: Sequence[bool],
    path: str | Path,
    title: str = "置信度分布 (confidence)",
) -> Path:
    """Histogram of prediction confidence, correct and wrong predictions stacked."""
    cjk_font()
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    lo = min(0.5, float(conf.min())) if conf.size else 0.5
    bins = np.linspace(np.floor(lo * 20) / 20, 1.0, 21)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(
        [conf[ok], conf[~ok]],
        bins=bins.tolist(),
        stacked=True,
        color=["C0", "C3"],
        label=["正确 correct", "错误 wrong"],
    )
    ax.set_xlabel("置信度 confidence (max probability)")
    ax.set_ylabel("样本数 rows")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reliability_diagram_png(
    panels: dict[str, tuple[Sequence[dict], float]],
    path: str | Path,
    title: str = "可靠性图 (reliability diagram)",
) -> Path:
    """One panel per name: accuracy per confidence bin against the diagonal, with the ECE.

    ``panels`` maps a panel title to (bins, ece); bins as ``calibration.reliability_bins``."""
    cjk_font()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, (bins, ece)) in zip(axes[0], panels.items(), strict=True):
        width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        acc = [b["accuracy"] or 0.0 for b in bins]
        conf = [b["confidence"] if b["count"] else (b["lo"] + b["hi"]) / 2 for b in bins]
        ax.bar(
            centers, acc, width=width * 0.95, color="C0", edgecolor="white", label="准确率 accuracy"
        )
        gap_lo = [min(a, c) for a, c in zip(acc, conf, strict=True)]
        gap_h = [abs(c - a) if b["count"] else 0 for a, c, b in zip(acc, conf, bins, strict=True)]
        ax.bar(
            centers,
            gap_h,
            bottom=gap_lo,
            width=width * 0.95,
            facecolor="none",
            edgecolor="C3",
            hatch="///",
            linewidth=0.8,
            label="差距 gap",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="完美校准 perfect")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("置信度 confidence")
        ax.set_ylabel("准确率 accuracy")
        ax.set_title(f"{name}\nECE = {ece:.4f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def coverage_curve_png(
    coverage: Sequence[float],
    accuracy: Sequence[float],
    path: str | Path,
    *,
    target: float | None = None,
    at_target: dict | None = None,
    title: str = "覆盖率-准确率 (accuracy vs coverage)",
) -> Path:
    """Accuracy on the answered rows against the share answered (abstaining below a threshold)."""
    cjk_font()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(coverage, accuracy, color="C0", label="准确率 accuracy")
    if target is not None:
        ax.axhline(target, color="C3", ls="--", lw=1, label=f"目标 target {target:.2f}")
    if at_target and at_target.get("threshold") is not None:
        ax.plot([at_target["coverage"]], [at_target["accuracy"]], "o", color="C3")
        ax.annotate(
            f"阈值 threshold {at_target['threshold']:.3f}\n覆盖 coverage {at_target['coverage']:.1%}",
            (at_target["coverage"], at_target["accuracy"]),
            textcoords="offset points",
            xytext=(-10, -35),
            ha="right",
        )
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("覆盖率 coverage (share of rows answered)")
    ax.set_ylabel("准确率 accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def robustness_png(robustness: dict, path: str | Path, title: str = "鲁棒性 (robustness)") -> Path:
    """Accuracy per perturbation (bars) against the clean accuracy, flip rate annotated.

    ``robustness`` is the summary written to ``robustness.json``."""
    cjk_font()
    items = [(k, v) for k, v in robustness["perturbations"].items() if "accuracy" in v]
    names = [v.get("description", k) for k, v in items]
    acc = [v["accuracy"] for _, v in items]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * max(len(items), 1)))
    ypos = np.arange(len(items))
    ax.barh(ypos, acc, color="C0")
    clean = robustness["clean_accuracy"]
    ax.axvline(clean, color="C3", ls="--", lw=1, label=f"无扰动 clean {clean:.3f}")
    for y, (_, v) in enumerate(items):
        ax.text(
            v["accuracy"] + 0.005,
            y,
            f"{v['accuracy']:.3f}  翻转 flips {v['flip_rate']:.1%}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(ypos, names)
    ax.invert_yaxis()
    lo = max(0.0, np.floor((min([*acc, clean]) - 0.1) * 10) / 10) if acc else 0.0
    ax.set_xlim(lo, 1.0 + 0.3 * (1.0 - lo))
    ax.set_xlabel("准确率 accuracy")
    score = robustness.get("robustness_score")
    ax.set_title(title + (f"  score {score:.3f}" if score is not None else ""))
    ax.legend(loc="lower right")
    return _save(fig, path)
