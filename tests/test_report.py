"""report.html: self-contained, and rendered by headless Chromium with its headline table."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from zhtune.classifier import Classifier
from zhtune.data import Split, Splits
from zhtune.data.labels import LabelMap
from zhtune.errors import ZhtuneError
from zhtune.evaluation.evaluate import EvaluateConfig, evaluate_model
from zhtune.evaluation.report import build_report

POS = ["质量很好，推荐", "非常满意，好评", "物流快，很好", "味道好，满意", "服务好，推荐购买"]
NEG = ["质量差，失望", "太慢了，差评", "坏了，很失望", "味道差，不推荐", "包装破损，差"]


class KeywordModel:
    labels = ["negative", "positive"]

    def __init__(self, sharp: float = 2.0) -> None:
        self.sharp = sharp

    def predict_proba(self, texts, batch_size=32):
        s = np.array(
            [
                sum(t.count(w) for w in "好满意推荐") - sum(t.count(w) for w in "差坏慢失望")
                for t in texts
            ],
            dtype=float,
        )
        p = 1 / (1 + np.exp(-self.sharp * s + 0.3))
        return np.stack([1 - p, p], axis=1)


def _splits() -> Splits:
    texts = POS + NEG + [t + "！" for t in POS] + [t + "。" for t in NEG]
    labels = (["positive"] * 5 + ["negative"] * 5) * 2
    split = Split(texts, labels)
    return Splits(split, split, split, LabelMap.from_labels(labels, ["negative", "positive"]))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cfg = EvaluateConfig(train="unused.csv", max_robustness_samples=10)
    rows = []
    for name, sharp in (("关键词模型 sharp", 4.0), ("keyword soft", 1.0)):
        clf = Classifier(KeywordModel(sharp), "keyword", f"mem-{sharp}")
        rows.append(evaluate_model(clf, cfg, out / name, splits=_splits(), name=name, report=False))
    return build_report(rows, out, "对比报告 comparison"), rows


def test_report_is_self_contained(report_dir):
    path, rows = report_dir
    html = path.read_text(encoding="utf-8")
    assert '<table id="headline">' in html
    head = html[html.index('<table id="headline">') : html.index("</table>")]
    assert "关键词模型 sharp" in head and "keyword soft" in head
    assert html.count("data:image/png;base64,") >= 2 * 4
    # nothing is fetched: every src is inline data and there is no script
    assert all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', html))
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for section in ("鲁棒性 robustness", "most confident errors"):
        assert section in html


def test_build_report_from_evaluation_directories(report_dir, tmp_path):
    _, rows = report_dir
    page = build_report([r["eval_dir"] for r in rows], tmp_path, "from dirs")
    assert "keyword soft" in page.read_text(encoding="utf-8")
    with pytest.raises(ZhtuneError, match="not an evaluation directory"):
        build_report([tmp_path / "nothing"], tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not installed (Debian: apt-get install chromium; `make browser`)",
)
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    path, _ = report_dir
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = path.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    table = re.search(r'<table id="headline">.*?</table>', dom, re.S)
    assert table, "the rendered page has no headline table"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table.group(0), re.S)
    assert any("关键词模型 sharp" in c for c in cells)
    assert len(re.findall(r"<tr>", table.group(0))) == 3  # header + two models
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,1600", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert im.std() > 20  # not a blank page


def test_evaluate_explains_the_most_confident_errors(report_dir, tmp_path):
    """``evaluate`` writes word attributions for at most ``explain_errors`` of its most
    confident errors (occlusion: the keyword model has no gradients); the page colours them."""
    import json

    _, rows = report_dir
    d = rows[0]["eval_dir"]
    from pathlib import Path

    errors = [json.loads(x) for x in (Path(d) / "errors.jsonl").read_text().splitlines()]
    ex = [json.loads(x) for x in (Path(d) / "explanations.jsonl").read_text().splitlines()]
    assert errors and len(ex) == min(5, len(errors))
    assert [x["text"] for x in ex] == [e["text"] for e in errors[: len(ex)]]
    assert all(x["method"] == "occlusion" and x["label"] != x["gold"] for x in ex)
    for x in ex:  # a keyword that pushes toward the (wrong) label gets a positive score
        top = max(x["attributions"], key=lambda a: a["score"])
        assert top["score"] > 0 and any(c in top["text"] for c in "好满意推荐差坏慢失望")
    page = build_report([d], tmp_path).read_text(encoding="utf-8")
    assert "why the most confident errors" in page and "background:rgba(22,163,74" in page
    # --explain-errors 0: none
    cfg = EvaluateConfig(train="unused.csv", robustness=False, explain_errors=0)
    clf = Classifier(KeywordModel(4.0), "keyword", "mem")
    row = evaluate_model(clf, cfg, tmp_path / "none", splits=_splits(), report=True)
    assert not (Path(row["eval_dir"]) / "explanations.jsonl").exists()
    assert "why the most confident errors" not in (tmp_path / "none" / "report.html").read_text()
    with pytest.raises(ZhtuneError, match="explain_errors"):
        EvaluateConfig(train="unused.csv", explain_errors=-1)
