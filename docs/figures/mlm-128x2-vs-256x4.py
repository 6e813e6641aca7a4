"""docs/figures/mlm-128x2-vs-256x4.png from the two runs' history.jsonl (docs/experiments.md).

    PYTHONPATH=src python docs/figures/mlm-128x2-vs-256x4.py RUN_128x2 RUN_256x4
The 256x4 steps are scaled by 2.04, its measured per-step cost relative to 128x2."""

import json
import sys

from zhtune.plots import curves_png


def history(run: str) -> list[dict]:
    return [json.loads(x) for x in open(f"{run}/history.jsonl", encoding="utf-8") if x.strip()]


a, b = history(sys.argv[1]), history(sys.argv[2])
curves_png(
    {
        "128x2 (1,400 steps)": ([r["step"] for r in a], [r["loss"] for r in a]),
        "256x4 (690 steps, x2.04)": ([r["step"] * 2.04 for r in b], [r["loss"] for r in b]),
    },
    "docs/figures/mlm-128x2-vs-256x4.png",
    xlabel="compute (128x2 steps)",
    ylabel="MLM train loss",
    title="MLM at equal compute: 128x2 vs 256x4",
)
