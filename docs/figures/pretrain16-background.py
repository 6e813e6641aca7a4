# Regenerates pretrain16-background.png from the background runs' logs (issue 16).
import re

from zhtune.plots import curves_png

series = {}
for name, f in (
    ("MLM RoBERTa 256x4", "/work/pt16/mlm.log"),
    ("CLM Qwen2 128x4", "/work/pt16/clm.log"),
):
    xs, ys = [], []
    for line in open(f, encoding="utf-8"):
        m = re.search(r"step (\d+)/\d+ loss ([\d.]+)", line)
        if m:
            xs.append(int(m.group(1)))
            ys.append(float(m.group(2)))
    series[f"{name} (train loss)"] = (xs, ys)
series["unigram level of the corpus (6.73)"] = (
    [0, max(max(v[0]) for v in series.values())],
    [6.73, 6.73],
)
curves_png(
    series,
    "/work/wt/i16/docs/figures/pretrain16-background.png",
    xlabel="step",
    ylabel="loss (nats)",
    title="issue 16 background pretraining runs (load 20+, 2 cores)",
)
print({k: (v[0][-1], v[1][-1]) for k, v in series.items()})
