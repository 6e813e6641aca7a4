"""zhtune pretrain: chunking, config errors, exact resume, HF-loadable outputs, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from zhtune.cli import main
from zhtune.config import load_config
from zhtune.errors import ConfigError
from zhtune.pretrain.corpus import build_chunks, chunk_spans, load_corpus
from zhtune.pretrain.loop import (
    PretrainConfig,
    build_model,
    make_collator,
    predict_targets,
    run_pretrain,
)
from zhtune.text import load_tokenizer
from zhtune.training.checkpoints import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "我们",
    "喜欢",
    "自然语言",
    "处理",
    "北京",
    "大学",
    "研究",
    "很",
    "有意思",
    "这个",
    "产品",
    "质量",
    "不错",
    "价格",
    "便宜",
    "物流",
    "太",
    "慢",
    "了",
    "服务",
    "态度",
    "好",
]


def make_texts(n: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(WORDS, size=int(rng.integers(4, 11)))) + "。" for _ in range(n)]
    texts.append("".join(rng.choice(WORDS, size=120)) + "。")  # a long text: several chunks
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    texts = make_texts()
    path.write_text("\n".join(texts + texts[:5]) + "\n", encoding="utf-8")  # 5 duplicates
    return path


def tiny(corpus: Path, **kw) -> PretrainConfig:
    base = dict(
        text_files=[str(corpus)],
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        max_seq_length=32,
        batch_size=4,
        max_steps=8,
        log_steps=1,
        save_steps=4,
        learning_rate=1e-3,
        warmup_steps=2,
        precision="fp32",
        cache_dir="none",
        eval_ratio=0.1,
        device="cpu",  # the resume tests compare runs bit for bit: exact on CPU only
    )
    return PretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def mlm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    return out, run_pretrain(tiny(corpus), out)


# --- data --------------------------------------------------------------------------------
def test_chunking_drops_and_counts_empty_and_duplicate_chunks():
    tok = load_tokenizer()
    cfg = tiny(Path("unused"))
    texts = ["这个产品质量不错。", "这个产品质量不错。", "\ufffd\ufffd", "物流太慢了", "物流太慢了"]
    texts.append(make_texts(0)[-1])  # a long text: several (different) chunks
    chunks, stats = build_chunks(texts, tok, cfg)
    assert stats == {"empty_chunks_dropped": 1, "duplicate_chunks_dropped": 2}
    assert max(chunks.lengths) <= cfg.max_seq_length
    seqs = {chunks[i][0].tobytes() for i in range(len(chunks))}
    assert len(seqs) == len(chunks)  # no duplicates left
    for i in range(len(chunks)):
        ids, wids = chunks[i]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert wids[0] == -1 and wids[-1] == -1


def test_chunk_cuts_fall_between_words():
    wids = np.repeat(np.arange(20), 3)  # 20 words of 3 tokens
    spans = chunk_spans(wids, 10)
    assert all(e - s <= 10 for s, e in spans) and spans[-1][1] == len(wids)
    assert all(e == len(wids) or wids[e] != wids[e - 1] for _, e in spans)
    assert chunk_spans(np.zeros(25, dtype=int), 10)[0] == (0, 10)  # a word longer than a chunk


def test_corpus_cache_hit_is_identical(corpus, tmp_path):
    tok = load_tokenizer()
    cfg = tiny(corpus, cache_dir=str(tmp_path))
    train1, held1, rep1 = load_corpus(cfg, tok)
    train2, held2, rep2 = load_corpus(cfg, tok)
    assert rep1["cache"].startswith("written") and rep2["cache"].startswith("hit")
    assert np.array_equal(train1.ids, train2.ids) and np.array_equal(held1.wids, held2.wids)
    assert rep2["duplicate_chunks_dropped"] == rep1["duplicate_chunks_dropped"] == 5


# --- config ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mask_prob", 1.5),
        ("objective", "gan"),
        ("num_heads", 3),
        ("dataset", ["no-such-corpus"]),
        ("max_steps", 0),
    ],
)
def test_bad_config_value_names_the_field(corpus, field, value):
    with pytest.raises(ConfigError, match=f"'{field}'") as e:
        tiny(corpus, **{field: value})
    assert "\n" not in str(e.value)


def test_bad_config_on_the_command_line_is_one_line(capsys, tmp_path):
    from zhtune.cli import main

    code = main(["pretrain", "--out", str(tmp_path), "--dataset", "inews", "--mask-prob", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "mask_prob" in err and "\n" not in err


def test_presets_parse():
    presets = sorted((ROOT / "configs").glob("pretrain-*.yaml"))
    assert {p.name for p in presets} >= {
        "pretrain-tiny.yaml",
        "pretrain-base.yaml",
        "pretrain-clm-tiny.yaml",
    }
    for p in presets:
        cfg = load_config(PretrainConfig, p)
        assert cfg.hidden_size % cfg.num_heads == 0


# --- training, resume, outputs -----------------------------------------------------------
def test_resume_gives_the_same_losses(corpus, mlm_run, tmp_path):
    full_out, full = mlm_run
    cfg = tiny(corpus, dropout=0.1)  # dropout on: the RNG state must be restored too
    part = run_pretrain(cfg, tmp_path, _stop_after=4)
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]
    (tmp_path / "checkpoints" / ".tmp-step-00000006-1").mkdir()  # a half-written one: ignored
    resumed = run_pretrain(replace(cfg, resume_from_checkpoint="auto"), tmp_path)
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in resumed.history]
    assert [r["step"] for r in resumed.history] == list(range(1, 9))
    assert b[:4] == [r["loss"] for r in part.history]
    assert np.allclose(a, b, rtol=0, atol=1e-6), (a, b)
    assert resumed.metrics["eval_loss"] == pytest.approx(full.metrics["eval_loss"], abs=1e-5)


def test_checkpoints_keep_the_newest_three(corpus, tmp_path):
    run_pretrain(tiny(corpus, save_steps=1, max_steps=5, eval_ratio=0.0), tmp_path)
    names = [c.name for c in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-00000003", "step-00000004", "step-00000005"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_mlm_output_loads_with_transformers(mlm_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, result = mlm_run
    hf = AutoModelForMaskedLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "RobertaForMaskedLM"
    enc = tok(["这个产品质量不错。", "物流太慢了"], padding=True, return_tensors="pt")
    ours = result.model.eval()
    with torch.no_grad():
        want = ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        got = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        assert torch.allclose(got, want, atol=1e-5)
        # the sparse head gives the full model's logits at the scored positions
        labels = torch.full_like(enc["input_ids"], -100)
        labels[:, 2] = enc["input_ids"][:, 2]
        batch = {**enc, "labels": labels}
        logits, target = predict_targets(ours, batch, "mlm")
        assert torch.allclose(logits, want[:, 2], atol=1e-5)
        assert torch.equal(target, enc["input_ids"][:, 2])
    manifest = json.loads((out / "zhtune.json").read_text())
    assert manifest["kind"] == "pretrained-mlm" and manifest["labels"] == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_loss", "eval_accuracy", "perplexity"} <= set(metrics)
    assert metrics["data"]["duplicate_chunks_dropped"] == 5


def test_output_works_for_sequence_classification(mlm_run):
    from transformers import AutoModelForSequenceClassification

    out, _ = mlm_run
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=3)
    logits = model(input_ids=torch.tensor([[101, 2769, 102]])).logits
    assert logits.shape == (1, 3)


def test_clm_qwen2_output_loads_with_transformers(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny(corpus, objective="clm", arch="qwen2", max_steps=3, save_steps=0)
    result = run_pretrain(cfg, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert hf.config.eos_token_id == tok.sep_token_id and hf.config.pad_token_id == 0
    enc = tok(["这个产品质量不错。"], return_tensors="pt")
    with torch.no_grad():
        want = result.model.eval()(**enc).logits
        got = hf(**enc).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert json.loads((tmp_path / "zhtune.json").read_text())["kind"] == "pretrained-clm"
    assert {"eval_loss", "perplexity"} <= set(result.metrics)


def test_cli_end_to_end(corpus, tmp_path, capsys):
    from zhtune.cli import main

    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--text-files", str(corpus), "--hidden-size", "32"]
    args += ["--num-heads", "2", "--intermediate-size", "64", "--num-hidden-layers", "2"]
    args += ["--max-seq-length", "32", "--batch-size", "8", "--max-steps", "4"]
    args += ["--cache-dir", "none", "--precision", "fp32", "--save-steps", "2"]
    assert main(args) == 0
    assert "held-out loss" in capsys.readouterr().out
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "history.jsonl",
        "metrics.json",
        "data.json",
        "loss_curve.png",
        "config.yaml",
        "zhtune.json",
    ):
        assert (out / name).is_file(), name
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 4
    assert {"loss", "learning_rate", "tokens_per_second"} <= set(history[-1])


def test_max_minutes_is_a_hard_stop_and_a_resume_replays_the_schedule(corpus, mlm_run, tmp_path):
    from safetensors.torch import load_file

    from zhtune.pretrain.loop import _schedule

    f = _schedule(warmup=2, total=100)  # a function of the step only, never of the clock
    assert f(1) == 0.5 and f(10) == pytest.approx(90 / 98) and f(100) == 0.0
    stopped = run_pretrain(tiny(corpus, max_minutes=1e-6), tmp_path)  # stops after step 1
    m = stopped.metrics
    assert m["steps"] == 1 and m["planned_steps"] == 8
    assert m["stopped_early"] is True and "stopped early by max_minutes" in m["stop_reason"]
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000001"]
    # the learning rate after step 1 is the 8-step schedule's (warm-up 2: half the peak)
    assert m["final_train_loss"] == pytest.approx(mlm_run[1].history[0]["loss"], rel=1e-6)
    resumed = run_pretrain(tiny(corpus), tmp_path)  # auto-resume from step-00000001
    assert resumed.metrics["steps"] == 8 and resumed.metrics["stopped_early"] is False
    ours, ref = (
        load_file(str(tmp_path / "model.safetensors")),
        load_file(str(mlm_run[0] / "model.safetensors")),
    )
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_resume_refuses_a_different_model_shape(corpus, mlm_run):
    from zhtune.errors import ZhtuneError

    out, _ = mlm_run
    with pytest.raises(ZhtuneError, match="hidden_size=32 \\(now 16\\)"):
        run_pretrain(tiny(corpus, hidden_size=16), out)


# --- a byte-level BPE tokenizer (Qwen2-like: pad = eos <|endoftext|>, no bos/cls/sep/mask) --
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory) -> Path:
    """A small byte-level BPE trained here with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(make_texts(200, seed=1), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT)
    path = tmp_path_factory.mktemp("bpe")
    fast.save_pretrained(path)
    return path


def test_clm_with_a_bpe_tokenizer_ends_chunks_with_eos(corpus, bpe_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = load_tokenizer(str(bpe_tokenizer))
    assert tok.cls_token_id is None and tok.bos_token_id is None and tok.mask_token_id is None
    eos = tok.convert_tokens_to_ids(EOT)
    cfg = tiny(corpus, objective="clm", tokenizer_path=str(bpe_tokenizer), save_steps=0)
    train, _, _ = load_corpus(cfg, tok)
    for i in range(len(train)):
        ids, _ = train[i]
        assert ids[-1] == eos and eos not in ids[:-1] and len(ids) <= cfg.max_seq_length
    result = run_pretrain(cfg, tmp_path)
    assert result.metrics["steps"] == 8 and np.isfinite(result.metrics["eval_loss"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.eos_token_id == eos == model.config.pad_token_id
    assert model.config.bos_token_id is None and model.generation_config.eos_token_id == eos
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert saved.eos_token == EOT and saved.bos_token is None  # bos/eos kept, not [CLS]/[SEP]


def test_mlm_without_a_mask_token_is_a_one_line_error(corpus, bpe_tokenizer, tmp_path, capsys):
    from zhtune.cli import main

    with pytest.raises(ConfigError, match="no mask token"):
        run_pretrain(tiny(corpus, tokenizer_path=str(bpe_tokenizer)), tmp_path)
    args = ["pretrain", "--out", str(tmp_path), "--text-files", str(corpus)]
    code = main([*args, "--tokenizer-path", str(bpe_tokenizer), "--objective", "mlm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no mask token" in err and "\n" not in err


def test_fresh_start_keeps_an_earlier_runs_checkpoints_unless_overwrite(corpus, tmp_path):
    from zhtune.errors import ConfigError

    cfg = tiny(corpus, save_steps=2, max_steps=2, eval_ratio=0.0)
    run_pretrain(cfg, tmp_path)
    with pytest.raises(ConfigError, match="--overwrite"):
        run_pretrain(replace(cfg, resume_from_checkpoint="none"), tmp_path)
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    run_pretrain(replace(cfg, resume_from_checkpoint="none", overwrite=True), tmp_path)
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]


@pytest.mark.slow  # torch.compile: ~1 min of compiling on 2 cores
def test_compile_pads_to_fixed_widths_and_saves_the_same_names(corpus, tmp_path):
    """--compile: batch widths are multiples of COMPILE_WIDTH, the loss stays finite, and
    the saved model has the eager model's parameter names (loads as a plain HF model)."""
    from transformers import AutoModelForMaskedLM

    from zhtune.pretrain.model import COMPILE_WIDTH
    from zhtune.text import load_tokenizer

    cfg = tiny(corpus, compile=True, max_steps=3, save_steps=0)
    collate = make_collator(cfg, load_tokenizer(), seed=0)
    short = (np.arange(5, 12, dtype=np.int32), np.arange(7, dtype=np.int32))
    assert collate([short])["input_ids"].shape[1] == COMPILE_WIDTH
    result = run_pretrain(cfg, tmp_path / "c")
    assert np.isfinite(result.metrics["eval_loss"])
    eager = build_model(tiny(corpus), load_tokenizer()).state_dict().keys()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "c")
    assert set(loaded.state_dict().keys()) == set(eager)


# --- continued pretraining (--init-from) ---------------------------------------------------
def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_init_from_starts_from_the_given_weights(corpus, mlm_run, tmp_path):
    out, _ = mlm_run
    # no learning (lr ~ 0): the continued model is the one it started from
    cfg = tiny(corpus, init_from=str(out), hidden_size=64, num_heads=4, max_steps=2,
               save_steps=0, learning_rate=1e-30, warmup_steps=0)  # fmt: skip
    assert (cfg.hidden_size, cfg.num_heads, cfg.tokenizer_path) == (32, 2, str(out))  # its shape
    run_pretrain(cfg, tmp_path / "same")
    before, after = _weights(out), _weights(tmp_path / "same")
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-6
    # with learning, the held-out loss moves from the start model's
    moved = run_pretrain(tiny(corpus, init_from=str(out), max_steps=4, save_steps=0),
                         tmp_path / "moved")  # fmt: skip
    assert any(not torch.equal(before[k], v) for k, v in _weights(tmp_path / "moved").items())
    assert moved.metrics["eval_loss"] > 0


def test_init_from_a_bert_architecture_checkpoint(corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

    from test_real_path import ROBERTA_WWM_EXT
    from zhtune.text import load_tokenizer

    base = tmp_path / "roberta-wwm-ext"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**ROBERTA_WWM_EXT)).save_pretrained(base)
    load_tokenizer().save_pretrained(base)
    run_pretrain(tiny(corpus, init_from=str(base), max_steps=3, save_steps=0), tmp_path / "dapt")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "dapt")
    assert type(hf).__name__ == "BertForMaskedLM"
    start = _weights(base)["bert.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(
        hf.state_dict()["bert.encoder.layer.0.attention.self.query.weight"], start
    )


def test_init_from_a_missing_model_is_one_line(corpus, tmp_path, capsys):
    rc = main(["pretrain", "--text-files", str(corpus), "--init-from", str(tmp_path / "none"),
               "--max-steps", "1", "--cache-dir", "none", "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "init_from" in err, err
