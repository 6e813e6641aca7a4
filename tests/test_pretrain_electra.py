"""zhtune pretrain --objective electra: the loss, exact resume, the saved discriminator
(transformers and ``zhtune finetune``), one-line errors for bad combinations."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import labelled_rows, write_csv
from test_pretrain import bpe_tokenizer, make_texts, tiny  # noqa: F401  (bpe_tokenizer: a fixture)
from zhtune.cli import main
from zhtune.errors import ConfigError
from zhtune.pretrain import electra
from zhtune.pretrain.loop import build_model, make_collator, run_pretrain
from zhtune.text import load_tokenizer

DISC_WEIGHT = 50.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(make_texts()) + "\n", encoding="utf-8")
    return path


def tiny_electra(corpus_path, **kw):
    return tiny(corpus_path, **{"objective": "electra", "dropout": 0.0, **kw})


@pytest.fixture(scope="module")
def electra_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("electra")
    return out, run_pretrain(tiny_electra(corpus), out)


@pytest.mark.slow
def test_electra_end_to_end_saves_discriminator_and_generator(electra_run):
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        ElectraForPreTraining,
    )

    out, result = electra_run
    m = result.metrics
    assert m["objective"] == "electra" and m["steps"] == 8
    assert 0.0 <= m["discriminator_accuracy"] <= 1.0 and m["eval_predicted_tokens"] > 0
    assert m["discriminator_auc"] is None or 0.0 <= m["discriminator_auc"] <= 1.0
    assert 0.0 < m["replaced_share"] < 1.0
    disc = ElectraForPreTraining.from_pretrained(out)
    assert disc.config.hidden_size == 32  # the run directory holds the discriminator
    trained = result.model.discriminator.state_dict()
    for k, v in disc.state_dict().items():
        assert torch.equal(v, trained[k]), k
    gen = AutoModelForMaskedLM.from_pretrained(out / "generator")
    assert gen.config.hidden_size == 8 and gen.config.embedding_size == 32  # 1/4, shared embeds
    shared = disc.electra.embeddings.word_embeddings.weight
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, shared)
    assert (out / "generator" / "tokenizer.json").is_file()
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    assert clf.electra.encoder.layer[0].attention.self.query.weight.equal(
        disc.electra.encoder.layer[0].attention.self.query.weight
    )
    assert clf(input_ids=torch.tensor([[101, 2769, 102]])).logits.shape == (1, 2)
    assert AutoModel.from_pretrained(out).config.model_type == "electra"


@pytest.mark.slow
def test_zhtune_finetune_runs_on_the_electra_run(electra_run, tmp_path):
    out, _ = electra_run
    train = write_csv(tmp_path / "train.csv", labelled_rows(4))
    ft = tmp_path / "ft"
    args = ["finetune", "--model", str(out), "--train", str(train), "--out", str(ft)]
    args += ["--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--max-length", "32"]
    assert main([*args, "--progress", "false", "--report-to", "none"]) == 0
    metrics = json.loads((ft / "metrics.json").read_text(encoding="utf-8"))
    assert "accuracy" in json.dumps(metrics)
    assert json.loads((ft / "config.json").read_text(encoding="utf-8"))["model_type"] == "electra"


def test_loss_is_generator_ce_plus_weight_times_bce(corpus):
    """The loop's loss on a hand-made batch equals HF's own generator MLM loss plus
    DISC_WEIGHT x HF's discriminator BCE on the same (re-drawn) corrupted input."""
    tok = load_tokenizer()
    cfg = tiny_electra(corpus, electra_disc_weight=DISC_WEIGHT)
    pair = build_model(cfg, tok).eval()
    texts = ["我们喜欢自然语言处理。", "这个产品质量不错", "物流太慢了"]
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    labels = torch.full_like(ids, -100)
    labels[0, 1:3], labels[1, 4], labels[2, 2:4] = ids[0, 1:3], ids[1, 4], ids[2, 2:4]
    masked_ids = torch.where(labels != -100, tok.mask_token_id, ids)
    batch = {"input_ids": masked_ids, "attention_mask": att, "labels": labels}

    sampler = torch.Generator().manual_seed(5)
    out = electra.predict(pair, batch, sampler)
    n_masked = int((labels != -100).sum())
    loop_loss = electra.step_loss(batch, cfg)(out).item() / n_masked
    corrupted = out[4]
    gen_ce = pair.generator(input_ids=masked_ids, attention_mask=att, labels=labels).loss
    is_replaced = (corrupted != ids).long()
    assert torch.equal(corrupted[labels == -100], ids[labels == -100])  # only masked changed
    bce = pair.discriminator(input_ids=corrupted, attention_mask=att, labels=is_replaced).loss
    assert loop_loss == pytest.approx(gen_ce.item() + DISC_WEIGHT * bce.item(), rel=1e-5)
    # the same seed draws the same replacements
    again = electra.predict(pair, batch, torch.Generator().manual_seed(5))[4]
    assert torch.equal(again, corrupted)


@pytest.mark.slow
def test_electra_resume_gives_identical_weights(corpus, tmp_path):
    # both runs here, in the same process state (other tests may change torch's threads)
    cfg = tiny_electra(corpus, dropout=0.1)  # dropout on: its RNG state is restored too
    full_out, part_out = tmp_path / "full", tmp_path / "part"
    full = run_pretrain(cfg, full_out)
    run_pretrain(cfg, part_out, _stop_after=4)
    resumed = run_pretrain(replace(cfg, resume_from_checkpoint="auto"), part_out)
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in resumed.history]
    assert np.allclose(a, b, rtol=0, atol=1e-6), (a, b)
    for name in ("model.safetensors", "generator/model.safetensors"):
        x, y = load_file(full_out / name), load_file(part_out / name)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)


def test_electra_collator_is_the_whole_word_masker(corpus):
    from zhtune.pretrain.masking import WholeWordMaskCollator

    assert isinstance(
        make_collator(tiny_electra(corpus), load_tokenizer(), 0), WholeWordMaskCollator
    )


def test_electra_with_qwen2_is_a_one_line_error(corpus, tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs arch electra"):
        tiny_electra(corpus, arch="qwen2")
    args = ["pretrain", "--out", str(tmp_path), "--text-files", str(corpus)]
    assert main([*args, "--objective", "electra", "--arch", "qwen2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs arch electra" in err and "\n" not in err


def test_electra_without_a_mask_token_is_a_one_line_error(corpus, bpe_tokenizer, tmp_path, capsys):  # noqa: F811
    args = ["pretrain", "--out", str(tmp_path), "--text-files", str(corpus), "--cache-dir", "none"]
    code = main([*args, "--tokenizer-path", str(bpe_tokenizer), "--objective", "electra"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no mask token, which objective electra needs" in err
    assert "\n" not in err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("generator_size", 0.0, "must be in"),
        ("electra_disc_weight", -1.0, "must be > 0"),
        ("compile", True, "does not support compile"),
        ("sharding", "fsdp", "DDP only"),
    ],
)
def test_bad_electra_options_name_the_field(corpus, field, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_electra(corpus, **{field: value})
