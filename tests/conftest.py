"""Shared fixtures: small data files written in code (no downloads)."""

from __future__ import annotations

import csv
import json
import socket
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


def tiny_encoder(out: Path, labels: list[str] = ("negative", "positive"), seed: int = 0) -> Path:
    """A random 2-layer BERT classifier with the packaged Chinese vocabulary, as a zhtune model dir."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from zhtune.runs import write_manifest
    from zhtune.text import load_tokenizer

    labels = list(labels)
    cfg = BertConfig(
        vocab_size=21128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        initializer_range=0.5,  # larger weights: predictions differ from text to text
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    write_manifest(out, "encoder", labels)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": ""}  # for subprocesses: no GPU visible


@pytest.fixture
def cpu_only(monkeypatch):
    """Pin a test to the CPU, in this process and in the processes it starts. Exact-resume
    tests need it: CUDA kernels are nondeterministic, so resumed and uninterrupted runs are
    bit-for-bit equal on CPU only (docs/reliability.md)."""
    import torch

    for k, v in CPU_ONLY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
