"""Shared fixtures: small data files written in code (no downloads)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

POS = [
    "质量很好，物流也快",
    "非常满意，还会再买",
    "东西不错，值得推荐",
    "包装精美，服务周到",
    "性价比高，很喜欢",
    "屏幕清晰，运行流畅",
    "味道很好，孩子爱吃",
    "做工精细，大小合适",
    "送货及时，客服热情",
    "这本书写得真好",
]
NEG = [
    "质量太差了，退货",
    "完全不能用，失望",
    "物流很慢，包装破损",
    "客服态度恶劣",
    "用了两天就坏了",
    "和描述不符，差评",
    "味道难吃，不推荐",
    "做工粗糙，有异味",
    "发错货了，很生气",
    "这本书印刷模糊",
]


def labelled_rows(n_copies: int = 3) -> list[tuple[str, str]]:
    rows = []
    for k in range(n_copies):
        rows += [(f"{t}{'！' * k}", "positive") for t in POS]
        rows += [(f"{t}{'。' * k}", "negative") for t in NEG]
    return rows


def write_csv(
    path: Path, rows: list[tuple[str, str]], header=("text", "label"), delimiter=","
) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", labelled_rows())
