"""zhtune lora / zero-shot / merge end to end on a tiny Qwen2 and a small CSV (no downloads)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import labelled_rows, write_csv
from test_llm import TEXTS, tiny_qwen2_dir
from zhtune import Classifier
from zhtune.cli import main
from zhtune.config import load_config
from zhtune.llm.lora import LlmConfig, build_model, save_run
from zhtune.llm.models import HeadBackend, load_llm_tokenizer, load_tuned, scorer_from_manifest
from zhtune.runs import read_manifest

FAST = {
    "learning_rate": 1e-2,
    "batch_size": 8,
    "max_length": 32,
    "max_steps": 6,
    "eval_every": 3,
    "warmup_ratio": 0.0,
    "lora_r": 4,
    "lora_alpha": 8,
    "progress": False,
    "report_to": "none",
}


def flags(d: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in d.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One base model, one CSV, and the CLI runs the tests below inspect."""
    root = tmp_path_factory.mktemp("llmcli")
    base = tiny_qwen2_dir(root / "base")
    train = write_csv(root / "train.csv", labelled_rows(2))
    out = {"root": root, "base": base, "train": train}
    common = ["--train", str(train), "--model", str(base), *flags(FAST)]
    for name, extra in (
        ("head", ["--mode", "head"]),
        ("scoring", ["--mode", "scoring", "--label-words", "positive=正面|好评,negative=负面"]),
    ):
        out[name] = root / name
        assert main(["lora", *common, "--out", str(out[name]), *extra]) == 0
    out["zero-shot"] = root / "zs"
    zs = ["zero-shot", "--train", str(train), "--model", str(base), "--out", str(out["zero-shot"])]
    assert main([*zs, "--max-length", "32"]) == 0
    return out


def test_lora_head_run_directory(runs):
    out = runs["head"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                 "zhtune.json", "config.yaml", "metrics.json", "predictions.jsonl",
                 "history.jsonl", "training_curves.png", "confusion_matrix.png", "per_class.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not (out / "model.safetensors").exists()
    m = read_manifest(out)
    assert m["kind"] == "lora-head" and m["mode"] == "head"
    assert m["base_model"] == str(runs["base"].resolve()) and m["labels"] == [
        "negative",
        "positive",
    ]
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)  # head saved
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("accuracy", "macro_f1", "train_seconds", "model_bytes", "texts_per_second"):
        assert key in metrics
    assert metrics["steps"] == 6 and metrics["model_bytes"] < 200_000  # the adapter only
    # checkpoints hold the adapter, not the base
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert ckpts and all((c / "adapter_model.safetensors").is_file() for c in ckpts)
    pred = Classifier.load(out).predict("质量很好")
    assert pred["label"] in ("negative", "positive") and abs(sum(pred["probs"].values()) - 1) < 1e-6


def test_lora_scoring_run_directory(runs):
    out = runs["scoring"]
    m = read_manifest(out)
    assert m["kind"] == "scoring" and m["template"] == "评论：{text}\n情感倾向："
    assert m["label_words"] == {"negative": ["负面"], "positive": ["正面", "好评"]}
    assert (out / "adapter_model.safetensors").is_file()
    # checkpoints of the scoring wrapper hold its trainable (LoRA) weights only
    for ckpt in (out / "checkpoints").glob("checkpoint-*"):
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            names = list(f.keys())
        assert names and all("lora_" in k for k in names)
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and "eval_macro_f1" in r for r in history)
    rows = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == json.loads((out / "metrics.json").read_text())["n"]


def test_zero_shot_run_matches_direct_scoring(runs):
    out = runs["zero-shot"]
    m = read_manifest(out)
    assert m["kind"] == "scoring" and m["label_words"] == {
        "negative": ["负面"],
        "positive": ["正面"],
    }
    clf = Classifier.load(out)
    probs = clf.predict_proba(TEXTS)
    tok = load_llm_tokenizer(str(runs["base"]))
    from zhtune.llm.models import load_base

    lm = load_base(str(runs["base"]), "scoring", tok)
    scores = scorer_from_manifest(tok, m).predict_scores(lm, TEXTS)
    expected = np.exp(scores - scores.max(1, keepdims=True))
    assert np.abs(probs - expected / expected.sum(1, keepdims=True)).max() < 1e-5


@pytest.mark.parametrize("method", ["content-free", "dev-mean"])
def test_calibrated_zero_shot_subtracts_the_stored_bias(runs, method):
    from zhtune.llm.calibrate import CONTENT_FREE, log_mean_probs
    from zhtune.llm.models import load_base

    out = runs["root"] / f"zs-{method}"
    argv = ["zero-shot", "--train", str(runs["train"]), "--model", str(runs["base"]),
            "--max-length", "32", "--calibrate", method, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = read_manifest(out)
    tok = load_llm_tokenizer(str(runs["base"]))
    lm = load_base(str(runs["base"]), "scoring", tok)
    scorer = scorer_from_manifest(tok, m)
    if method == "content-free":
        texts = list(CONTENT_FREE)
    else:
        from zhtune.llm.zeroshot import ZeroShotConfig, zero_shot_splits

        cfg = load_config(ZeroShotConfig, out / "config.yaml")  # the run's own dev split
        texts = zero_shot_splits(cfg).dev.texts
    raw = scorer.predict_scores(lm, texts)
    bias = log_mean_probs(raw)
    assert np.allclose(m["class_bias"], bias - bias.mean(), atol=1e-6)
    # calibrated: the mean probabilities of the calibration texts map to uniform ones
    mapped = log_mean_probs(raw) - np.asarray(m["class_bias"])
    assert np.allclose(np.exp(mapped - mapped.max()), 1.0, atol=1e-6)
    # the scores of any text shift by exactly the bias
    probs = Classifier.load(out).predict_proba(TEXTS)
    s = scorer.predict_scores(lm, TEXTS) - np.asarray(m["class_bias"])
    e = np.exp(s - s.max(1, keepdims=True))
    assert np.abs(probs - e / e.sum(1, keepdims=True)).max() < 1e-5
    assert json.loads((out / "metrics.json").read_text())["calibration"]["method"] == method


def test_calibration_by_hand():
    from zhtune.llm.calibrate import class_bias

    scores = np.log(np.array([[1.0, 3.0], [1.0, 1.0]]))  # probabilities .25/.75 and .5/.5
    bias, report = class_bias("dev-mean", lambda t: scores, ["a", "b"])
    mean = np.log([0.375, 0.625])
    assert np.allclose(bias, mean - mean.mean()) and report == {"method": "dev-mean", "texts": 2}
    assert class_bias("none", lambda t: scores, [])[0] is None
    with pytest.raises(Exception, match="needs dev texts"):
        class_bias("dev-mean", lambda t: scores, [])


@pytest.mark.parametrize("name", ["head", "scoring"])
def test_merge_gives_the_logits_of_adapter_plus_base(runs, name):
    src = runs[name]
    merged = runs["root"] / f"{name}-merged"
    assert main(["merge", "--model", str(src), "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (
        merged / "adapter_config.json"
    ).exists()
    mm = read_manifest(merged)
    assert mm["kind"] == read_manifest(src)["kind"] and mm["standalone"] is True

    def logits(path: Path) -> np.ndarray:
        man = read_manifest(path)
        model, tok = load_tuned(path, man, for_training=True)  # adapter kept separate
        if man["kind"] == "scoring":
            return scorer_from_manifest(tok, man).predict_scores(model, TEXTS)
        enc = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            return model(**enc).logits.double().numpy()

    adapter, standalone = logits(src), logits(merged)
    assert np.abs(adapter - standalone).max() < 1e-4
    base_only = {**read_manifest(src), "freeze_base": False}
    base_model, tok = load_tuned(runs["base"], {**base_only, "standalone": True})
    if name == "scoring":  # the adapter did change the model
        bare = scorer_from_manifest(tok, base_only).predict_scores(base_model, TEXTS)
        assert np.abs(bare - adapter).max() > 1e-3
    # the merged model loads through Classifier like any other
    assert Classifier.load(merged).predict(TEXTS[0])["label"] in ("negative", "positive")
    if name == "head":
        from transformers import AutoModelForSequenceClassification

        assert AutoModelForSequenceClassification.from_pretrained(merged).config.num_labels == 2


def test_head_predictions_equal_after_save_and_reload(runs, tmp_path):
    from zhtune.data import load_splits

    cfg = LlmConfig(train=str(runs["train"]), model=str(runs["base"]), mode="head", **FAST)
    splits = load_splits(cfg)
    labels = list(splits.label_map.names)
    tok = load_llm_tokenizer(cfg.model)
    model, train, _, _, extra = build_model(cfg, labels, tok, splits)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    model.train()
    model(**batch, labels=torch.tensor([1, 0, 1])).loss.backward()
    opt.step()
    model.eval()
    before = HeadBackend(model, tok, labels, cfg.max_length).predict_proba(TEXTS)
    save_run(model, cfg, tmp_path, labels, tok, str(runs["base"].resolve()), extra)
    after = Classifier.load(tmp_path).predict_proba(TEXTS)
    assert np.abs(before - after).max() < 1e-5


def test_freeze_base_trains_only_the_head(runs, tmp_path):
    out = tmp_path / "frozen"
    args = ["lora", "--train", str(runs["train"]), "--model", str(runs["base"]), "--out", str(out)]
    assert main([*args, *flags({**FAST, "max_steps": 3}), "--freeze-base", "true"]) == 0
    assert (out / "head.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
    with safe_open(str(out / "head.safetensors"), "pt") as f:
        assert list(f.keys()) == ["score.weight"]
    assert read_manifest(out)["freeze_base"] is True
    assert Classifier.load(out).predict(TEXTS[0])["label"] in ("negative", "positive")


@pytest.mark.usefixtures("cpu_only")  # exact resume holds on CPU only
def test_resume_continues_at_the_right_step(runs, tmp_path):
    from transformers import TrainerCallback

    from zhtune.data import load_splits
    from zhtune.training.trainer import find_checkpoint, run_trainer

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    cfg = LlmConfig(train=str(runs["train"]), model=str(runs["base"]), mode="scoring",
                    **{**FAST, "max_steps": 4, "eval_every": 2})  # fmt: skip
    splits = load_splits(cfg)
    labels = list(splits.label_map.names)
    tok = load_llm_tokenizer(cfg.model)
    out = tmp_path / "run"
    model, train, dev, collator, _ = build_model(cfg, labels, tok, splits)
    with pytest.raises(KeyboardInterrupt):
        run_trainer(model, train, dev, cfg, out, labels, data_collator=collator, loss_fn=None,
                    callbacks=[Interrupt()])  # fmt: skip
    assert find_checkpoint(out / "checkpoints").name == "checkpoint-2"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model, train, dev, collator, _ = build_model(cfg, labels, tok, splits)
    fresh = model.state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    result = run_trainer(model, train, dev, cfg, out, labels, data_collator=collator, loss_fn=None)
    assert result.resumed_from.endswith("checkpoint-2") and result.global_step == 4
    steps = [r["step"] for r in result.history if r["kind"] == "train"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and min(steps) == 1
    assert steps[-1] == 4 and 3 in steps


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--lora-r", "0"], "lora_r"),
        (["--mode", "prefix"], "mode"),
        (["--lora-dropout", "1.5"], "lora_dropout"),
        (["--prompt-template", "没有占位符"], "prompt_template"),
        (["--mode", "scoring", "--label-words", "positive"], "label_words"),
        (["--mode", "scoring", "--label-words", "positive=好,neutral=中"], "label_words"),
        (["--mode", "scoring", "--label-words", "positive=好,negative=好"], "label_words"),
        (["--mode", "scoring", "--freeze-base", "true"], "freeze_base"),
        (["--mode", "scoring", "--loss", "focal"], "loss"),
        (["--target-modules", "w_proj"], "target_modules"),
        (["--score-norm", "median"], "score_norm"),
    ],
)
def test_bad_config_values_give_one_line_errors(runs, tmp_path, capsys, args, field):
    base = ["lora", "--train", str(runs["train"]), "--model", str(runs["base"])]
    rc = main([*base, "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and field in err, err


def test_bad_model_and_merge_inputs_give_one_line_errors(runs, tmp_path, capsys):
    cases = [
        ["lora", "--train", str(runs["train"]), "--model", str(tmp_path / "none"), "--out", "x"],
        ["zero-shot", "--train", str(runs["train"]), "--model", str(runs["base"]),
         "--max-length", "4", "--out", str(tmp_path / "z")],
        ["zero-shot", "--test", str(runs["train"]), "--model", str(runs["base"]),
         "--calibrate", "dev-mean", "--out", str(tmp_path / "z2")],  # test-only: no dev texts
        ["zero-shot", "--train", str(runs["train"]), "--model", str(runs["base"]),
         "--calibrate", "batch", "--out", str(tmp_path / "z3")],
        ["merge", "--model", str(runs["base"]), "--out", str(tmp_path / "m")],
    ]  # fmt: skip
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"zhtune {argv[0]}: error:"), err


def test_presets_parse():
    presets = sorted(glob.glob("configs/lora-*.yaml") + glob.glob("configs/qlora-*.yaml"))
    assert len(presets) >= 4
    for path in presets:
        cfg = load_config(LlmConfig, path)
        assert cfg.mode in ("head", "scoring") and "{text}" in cfg.prompt_template


@pytest.mark.slow
def test_llm_branch_for_the_quickstart(runs, tmp_path):
    from zhtune.data import DataConfig
    from zhtune.llm.lora import run_llm_branch

    data = DataConfig(train=str(runs["train"]))
    rows = run_llm_branch(data, tmp_path / "llm", pretrain_minutes=0.5, pretrain_max_steps=3,
                          max_train_samples=16, max_eval_samples=8, epochs=1)  # fmt: skip
    assert [r["model"].split(":")[0] for r in rows] == ["lora-head", "lora-scoring", "zero-shot"]
    for r in rows:
        for key in ("model", "accuracy", "macro_f1", "train_seconds", "model_bytes",
                    "texts_per_second", "pretrain_seconds"):  # fmt: skip
            assert key in r, key
    assert (tmp_path / "llm" / "pretrain-clm" / "model.safetensors").is_file()
    assert Classifier.load(tmp_path / "llm" / "lora-scoring").predict(TEXTS[0])["label"]
