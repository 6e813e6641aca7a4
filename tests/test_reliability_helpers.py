"""Shared pieces of the reliability suite (tests/test_reliability_*.py, docs/reliability.md):
tiny models built from configs in code, data files, pickle payloads that would leave a marker
file if anything unpickled them, subprocess helpers. The tests here check the helpers
themselves: the payloads are live (unpickling them really writes the marker), so their
absence in the other tests means something."""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import labelled_rows, write_csv

LABELS = ["negative", "positive"]
# one thread everywhere: results do not depend on the machine's load, and the cores are shared
ENV_1THREAD = {"ZHTUNE_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- tiny models --------------------------------------------------------------------------
def tiny_bert_classifier(out: Path, labels: list[str] = LABELS, seed: int = 0) -> Path:
    """A random 2-layer BERT classifier + the packaged tokenizer + zhtune.json (kind encoder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from zhtune.runs import write_manifest
    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    write_manifest(out, "encoder", labels, max_length=64)
    return out


def tiny_roberta_mlm(out: Path, seed: int = 0) -> Path:
    """A random 1-layer RoBERTa MLM (what `zhtune pretrain` writes): a base for finetune."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
    )
    RobertaForMaskedLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_qwen2(out: Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 causal LM with the packaged tokenizer: a base for lora."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train_csv(path: Path, copies: int = 3) -> Path:
    """The conftest sentiment rows: 20 texts x ``copies``, two labels."""
    return write_csv(path, labelled_rows(copies))


def corpus_txt(path: Path, n: int = 200) -> Path:
    """A small pretraining corpus (one text a line), deterministic."""
    import random

    from conftest import NEG, POS

    rng = random.Random(0)
    pool = POS + NEG
    lines = ["，".join(rng.sample(pool, 3)) + "。" for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- pickle payloads ----------------------------------------------------------------------
class _Touch:
    """Unpickling this calls ``pathlib.Path(marker).touch()``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _System:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def raw_payload(marker: Path) -> bytes:
    """A plain pickle stream (what an old-style ``.pth``/``.pkl`` file is)."""
    return pickle.dumps({"state": _System(marker)}, protocol=2)


def torch_payload(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint (what ``pytorch_model.bin`` / ``optimizer.pt`` are) whose
    data.pkl calls ``Path.touch(marker)``."""
    import torch

    torch.save({"weight": _Touch(marker)}, path)
    return path


PICKLE_NAMES = (
    "pytorch_model.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "training_args.bin",
)


def plant_pickles(directory: Path, marker: Path, names: tuple[str, ...] = PICKLE_NAMES) -> None:
    """Write a live payload under each of ``names`` in ``directory`` (zip and raw forms)."""
    for i, name in enumerate(names):
        if i % 2:
            (directory / name).write_bytes(raw_payload(marker))
        else:
            torch_payload(directory / name, marker)


# --- processes ----------------------------------------------------------------------------
def zhtune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zhtune", *args]


def run_zhtune(*args: str, timeout: float = 300, env: dict | None = None, **kw):
    """``python -m zhtune ARGS`` to completion; returns the CompletedProcess (text)."""
    return subprocess.run(
        zhtune_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV_1THREAD, **(env or {})},
        **kw,
    )


def wait_for(cond, timeout: float, interval: float = 0.01, proc=None) -> bool:
    """Poll ``cond()`` until true (True) or timeout / ``proc`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        time.sleep(interval)
    return False


# --- self-checks --------------------------------------------------------------------------
def test_payloads_are_live(tmp_path: Path) -> None:
    """Control: unpickling each payload (pickle, torch.load weights_only=False) writes the
    marker, so a missing marker elsewhere means nothing unpickled it."""
    import torch

    for how in ("raw", "torch"):
        marker = tmp_path / f"marker-{how}"
        if how == "raw":
            pickle.loads(raw_payload(marker))
        else:
            f = torch_payload(tmp_path / "p.bin", marker)
            torch.load(f, weights_only=False)
        assert marker.exists(), how


def test_torch_weights_only_refuses_the_payloads(tmp_path: Path) -> None:
    """What transformers' own loaders do (torch.load(weights_only=True)): refuse, no marker."""
    import torch

    marker = tmp_path / "marker"
    plant_pickles(tmp_path, marker)
    for name in PICKLE_NAMES:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / name, weights_only=True)
    assert not marker.exists()
