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


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(
    cm: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    title: str = "混淆矩阵 (confusion matrix)",
) -> Path:
    cjk_font()
    cm = np.asarray(cm)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n, 1.8 + 0.8 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("预测 predicted")
    ax.set_ylabel("真实 gold")
    ax.set_title(title)
    hi = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > hi else "black",
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
