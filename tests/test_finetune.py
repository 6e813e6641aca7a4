"""zhtune finetune end to end on tiny models built in code (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import labelled_rows, write_csv
from zhtune import Classifier
from zhtune.cli import main
from zhtune.finetune.encoder import FinetuneConfig, run_finetune
from zhtune.text import load_tokenizer
from zhtune.training.trainer import read_history, run_trainer, tokenize_split

# tiny but learns the fixture data in a few dozen steps
FAST = {
    "learning_rate": 3e-3,
    "batch_size": 8,
    "max_length": 32,
    "num_train_epochs": 4,
    "eval_every": 0.5,
    "warmup_ratio": 0.0,
    "progress": False,
    "report_to": "none",
}


def tiny_encoder_dir(path: Path, arch: str = "roberta-mlm") -> Path:
    """A randomly initialised tiny encoder in HF format, like ``zhtune pretrain`` writes."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    tok = load_tokenizer()
    sizes = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "pad_token_id": tok.pad_token_id,
    }
    if arch == "roberta-mlm":
        model = RobertaForMaskedLM(
            RobertaConfig(max_position_embeddings=130, type_vocab_size=1, **sizes)
        )
    else:
        model = BertModel(BertConfig(max_position_embeddings=128, **sizes))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def finetune_cfg(train: Path, model: Path | str, **kw) -> FinetuneConfig:
    return FinetuneConfig(train=str(train), model=str(model), **{**FAST, **kw})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[Path, dict, Path]:
    """One CLI run shared by the output checks: (run dir, metrics, train file)."""
    root = tmp_path_factory.mktemp("ft")
    train = write_csv(root / "train.csv", labelled_rows(4))
    model = tiny_encoder_dir(root / "tiny-roberta")
    out = root / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    rc = main(["finetune", "--train", str(train), "--model", str(model), "--out", str(out), *flags])
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text(encoding="utf-8")), train


def test_end_to_end_outputs(finetuned):
    out, m, _ = finetuned
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "zhtune.json",
        "config.yaml",
        "data.json",
        "metrics.json",
        "predictions.jsonl",
        "history.jsonl",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin"))
    assert (out / "checkpoints").is_dir() and list((out / "checkpoints").glob("checkpoint-*"))
    assert list((out / "tensorboard").glob("events.*")) == []  # report_to none
    assert m["accuracy"] >= 0.75, m["accuracy"]  # the fixture data is easy
    assert m["parameters"] > 0 and m["train_seconds"] > 0 and m["model_bytes"] > 0
    assert set(m) >= {"macro_f1", "per_class", "confusion_matrix", "texts_per_second"}
    manifest = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "encoder" and manifest["labels"] == ["negative", "positive"]


def test_pngs_exist_and_are_not_trivial(finetuned):
    out = finetuned[0]
    for name in ("training_curves.png", "confusion_matrix.png", "per_class.png"):
        f = out / name
        assert f.is_file() and f.stat().st_size > 8_000, name


def test_history_and_eval_every_fraction(finetuned):
    out = finetuned[0]
    rows = read_history(out / "history.jsonl")
    evals = [r for r in rows if r["kind"] == "eval"]
    train = [r for r in rows if r["kind"] == "train"]
    # 64 train rows / batch 8 = 8 steps per epoch; eval_every 0.5 -> every 4 steps, 4 epochs
    assert [r["step"] for r in evals] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert train and all("loss" in r and "learning_rate" in r for r in train)
    assert all("eval_macro_f1" in r and "eval_f1_positive" in r for r in evals)


def test_label_names_survive_and_transformers_gives_same_probs(finetuned):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = finetuned[0]
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "negative", 1: "positive"}
    assert config.label2id == {"negative": 0, "positive": 1}
    assert config.zhtune_max_length == 32
    # the last text has the vocabulary's last tokens (##😂, ##🔥): every token id must fit
    texts = [
        "质量很好，物流也快",
        "用了两天就坏了",
        "这本书印刷模糊，客服态度恶劣，不推荐",
        "b😂b🔥了",
    ]
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        plain = torch.softmax(model(**enc).logits, -1).numpy()
    clf = Classifier.load(out)
    assert clf.labels == ["negative", "positive"]
    np.testing.assert_allclose(clf.predict_proba(texts), plain, atol=1e-5)
    assert clf.predict(texts[0])["label"] in ("negative", "positive")


def test_bert_encoder_and_class_weights_focal(tmp_path, sentiment_csv):
    model = tiny_encoder_dir(tmp_path / "tiny-bert", arch="bert")
    m = run_finetune(
        finetune_cfg(
            sentiment_csv,
            model,
            class_weights="balanced",
            loss="focal",
            num_train_epochs=1,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        tmp_path / "run",
    )
    assert m["n"] > 0
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "run")
    assert config.model_type == "bert" and config.hidden_dropout_prob == 0.0


def _live_models() -> set[int]:
    import gc
    import warnings

    from transformers import PreTrainedModel

    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel)}


def test_from_scratch_model_none(tmp_path, sentiment_csv):
    before = _live_models()  # models other tests in this process may still hold
    m = run_finetune(
        finetune_cfg(
            sentiment_csv,
            "none",
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_train_epochs=1,
            report_to="tensorboard",
        ),
        tmp_path / "run",
    )
    assert "scratch" in m["model"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))
    # the trainer and the model were freed: a next run in this process starts clean
    assert not _live_models() - before
    assert Classifier.load(tmp_path / "run").labels == ["negative", "positive"]


def test_early_stopping_stops(tmp_path, sentiment_csv):
    # a learning rate this small cannot move the dev metric: patience 2 ends the run at the
    # third evaluation instead of running all 4 epochs x 4 evaluations
    m = run_finetune(
        finetune_cfg(
            sentiment_csv,
            tiny_encoder_dir(tmp_path / "m"),
            learning_rate=1e-12,
            eval_every=2,
            patience=2,
        ),
        tmp_path / "run",
    )
    assert m["stopped_early"] is True
    assert m["steps"] == 6  # evaluations at steps 2 (best), 4, 6 -> stop
    evals = [r for r in read_history(tmp_path / "run" / "history.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 3


@pytest.mark.usefixtures("cpu_only")  # exact resume holds on CPU only
def test_resume_continues_at_the_right_step(tmp_path, sentiment_csv):
    from transformers import TrainerCallback

    from zhtune.finetune.encoder import build_model, load_tokenizer_for
    from zhtune.training.trainer import find_checkpoint

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt

    cfg = finetune_cfg(sentiment_csv, "none", max_steps=8, eval_every=2, hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)  # fmt: skip
    from zhtune.data import load_splits

    splits = load_splits(cfg)
    tok = load_tokenizer_for(cfg)
    labels = list(splits.label_map.names)
    train = tokenize_split(splits.train, splits.label_map, tok, cfg.max_length)
    dev = tokenize_split(splits.dev, splits.label_map, tok, cfg.max_length)
    out = tmp_path / "run"
    model = build_model(cfg, labels, tok)
    with pytest.raises(KeyboardInterrupt):
        run_trainer(model, train, dev, cfg, out, labels, tokenizer=tok, callbacks=[Interrupt()])
    ckpt = find_checkpoint(out / "checkpoints")
    assert ckpt is not None and ckpt.name == "checkpoint-4"
    # a half-written newer checkpoint (no trainer_state.json) must not be picked
    (out / "checkpoints" / "checkpoint-5").mkdir()
    (out / "checkpoints" / "checkpoint-5" / "model.safetensors").write_bytes(b"partial")
    result = run_trainer(build_model(cfg, labels, tok), train, dev, cfg, out, labels, tokenizer=tok)
    assert result.resumed_from.endswith("checkpoint-4")
    assert result.global_step == 8
    steps = [r["step"] for r in result.history if r["kind"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 8
    assert min(s for s in steps if s > 4) == 5  # continued right after the checkpoint


def test_bad_config_one_line_cli_errors(tmp_path, sentiment_csv, capsys):
    base = ["finetune", "--train", str(sentiment_csv), "--out", str(tmp_path / "o")]
    cases = [
        (["--model", "none", "--learning-rate", "-1"], "learning_rate"),
        (["--model", "none", "--eval-every", "2.5"], "eval_every"),
        (["--model", "none", "--class-weights", "1,2,3"], "3 weights for 2 labels"),
        ([], "--model"),
        (["--model", str(tmp_path / "no-such-model")], "no-such-model"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", "none", "--precision", "fp16"], "fp16"))
    for extra, match in cases:
        capsys.readouterr()
        assert main([*base, *extra, "--report-to", "none", "--progress", "false"]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and match in err, err


def test_resume_auto_refuses_other_settings(finetuned):
    from zhtune.errors import ZhtuneError

    out, _, train = finetuned
    model = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))["base_model"]
    with pytest.raises(ZhtuneError, match="max_length=32 \\(now 48\\)"):
        run_finetune(finetune_cfg(train, model, max_length=48), out)


@pytest.mark.parametrize(
    "preset",
    sorted((Path(__file__).parents[1] / "configs").glob("finetune-*.yaml")),
    ids=lambda p: p.name,
)
def test_presets_parse_and_run_a_step(preset, tmp_path, sentiment_csv):
    from dataclasses import replace

    from zhtune.config import load_config

    cfg = load_config(FinetuneConfig, preset, model="none")
    cfg = replace(
        cfg,
        dataset=None,
        train=str(sentiment_csv),
        model=str(tiny_encoder_dir(tmp_path / "m")) if cfg.model != "none" else "none",
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_steps=1,
        eval_every=1,
        max_length=min(cfg.max_length, 64),
        report_to="none",
        progress=False,
    )
    m = run_finetune(cfg, tmp_path / "run")
    assert m["steps"] == 1


def test_half_precision_checkpoint_is_fine_tuned_in_fp32(tmp_path, sentiment_csv):
    """transformers 5 keeps a checkpoint's dtype (dtype="auto"): a bf16 base must still get
    fp32 trainable weights (issue 13, finding 5)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from conftest import tiny_encoder
    from zhtune.finetune.encoder import build_model, load_tokenizer_for

    base = tiny_encoder(tmp_path / "fp32")
    AutoModelForSequenceClassification.from_pretrained(base).to(torch.bfloat16).save_pretrained(
        tmp_path / "bf16"
    )
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bf16" / f).write_bytes((base / f).read_bytes())
    cfg = finetune_cfg(sentiment_csv, str(tmp_path / "bf16"), max_steps=1)
    model = build_model(cfg, ["negative", "positive"], load_tokenizer_for(cfg))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
