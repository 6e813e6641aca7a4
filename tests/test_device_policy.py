"""The device / precision policy and the CPU-visible fixes of issue 13 (tiny models)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_encoder
from zhtune import Classifier
from zhtune.config import add_config_args, arg, config_from_args
from zhtune.device import (
    frozen_dtype,
    inference_dtype,
    local_device_map,
    require_cpu,
    resolve_device,
    trainable_dtype,
)
from zhtune.errors import ConfigError, ZhtuneError


def test_resolve_device_and_dtypes():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert inference_dtype(torch.device("cpu")) == torch.float32
    assert trainable_dtype() == torch.float32
    with pytest.raises(ConfigError, match="allowed values"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="CPU only"):
        require_cpu(torch.device("cuda", 0), "--int8")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        assert frozen_dtype("auto") == torch.float32
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_qlora_device_map_is_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device_map() == {"": 3}  # not GPU 0 on every torchrun rank
    assert local_device_map(torch.device("cuda", 1)) == {"": 1}
    assert local_device_map(torch.device("cpu")) == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device_map() == {"": 0}


def test_encoder_backend_runs_on_the_device_it_is_given(tmp_path, monkeypatch):
    model = tiny_encoder(tmp_path / "enc")
    clf = Classifier.load(model, device="cpu")
    backend = clf.backend
    assert backend.device.type == "cpu"
    assert next(backend.model.parameters()).device.type == "cpu"
    # the inputs go where the model is, and logits come back through .cpu()
    seen = []
    forward = backend.model.forward

    def spy(**kw):
        seen.append({k: v.device.type for k, v in kw.items()})
        return forward(**kw)

    monkeypatch.setattr(backend.model, "forward", spy)
    p = clf.predict_proba(["质量很好", "太差了"])
    assert p.shape == (2, 2) and seen and all(d == "cpu" for s in seen for d in s.values())


def test_bf16_checkpoint_loads_as_fp32_for_cpu_inference(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_encoder(tmp_path / "enc")
    m = AutoModelForSequenceClassification.from_pretrained(model)
    m.to(torch.bfloat16).save_pretrained(model)  # a checkpoint saved in bf16
    clf = Classifier.load(model, device="cpu")
    assert next(clf.backend.model.parameters()).dtype == torch.float32


def test_lora_base_and_adapters_are_fp32_on_cpu(tmp_path):
    from test_llm import tiny_qwen2_dir
    from zhtune.llm.models import add_lora, load_base, load_llm_tokenizer

    base = tiny_qwen2_dir(tmp_path / "q")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(base).to(torch.bfloat16).save_pretrained(base)
    tok = load_llm_tokenizer(str(base))
    m = load_base(str(base), "head", tok, ["a", "b"], dtype=torch.bfloat16)  # a frozen base
    peft = add_lora(m, "head", 2, 4, 0.0, ["q_proj"])
    trainable = [p for p in peft.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # adapters + score
    frozen = [p for n, p in peft.named_parameters() if not p.requires_grad and "proj" in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    # default: the checkpoint's bf16 is not kept for weights that train
    full = load_base(str(base), "head", tok, ["a", "b"])
    assert all(p.dtype == torch.float32 for p in full.parameters())


def test_allow_pickle_prefers_safetensors_and_still_loads_them(tmp_path):
    model = tiny_encoder(tmp_path / "enc")
    ref = Classifier.load(model, device="cpu").predict_proba(["好"])
    # --allow-pickle on a normal safetensors model used to fail (use_safetensors=False)
    assert np.allclose(Classifier.load(model, allow_pickle=True).predict_proba(["好"]), ref)


def test_int8_and_onnx_are_cpu_only(tmp_path):
    model = tiny_encoder(tmp_path / "enc")
    from zhtune.serving.encoder import EncoderBackend

    with pytest.raises(ConfigError, match="CPU only"):
        EncoderBackend.load(model, int8=True, device=torch.device("cuda", 0))
    assert EncoderBackend.load(model, int8=True, device="auto").device.type == "cpu"
    from zhtune.serving.export import load_backend as onnx_backend

    with pytest.raises(ConfigError, match="CPU only"):
        onnx_backend(model, {"labels": ["a", "b"]}, device="cuda")


@dataclasses.dataclass
class _Switches:
    qlora: bool = arg(False, "a switch")
    merge: bool = arg(True, "on by default")


@pytest.mark.parametrize(
    ("argv", "qlora", "merge"),
    [([], False, True), (["--qlora"], True, True), (["--qlora", "true"], True, True),
     (["--qlora=false"], False, True), (["--no-merge"], False, False),
     (["--merge", "no", "--qlora"], True, False)],
)  # fmt: skip
def test_boolean_switches(argv, qlora, merge):
    p = argparse.ArgumentParser()
    add_config_args(p, _Switches)
    cfg = config_from_args(_Switches, p.parse_args(argv))
    assert (cfg.qlora, cfg.merge) == (qlora, merge)
    assert "--qlora [true|false], --no-qlora" in " ".join(p.format_help().split())
    with pytest.raises(ConfigError, match="qlora"):
        config_from_args(_Switches, p.parse_args(["--qlora", "maybe"]))


def test_temperature_scales_logits_beyond_the_old_clip():
    from zhtune.evaluation.calibration import fit_temperature
    from zhtune.probs import apply_temperature, softmax, temperature_softmax

    logits = np.array([[0.0, 40.0], [0.0, 35.0], [3.0, 0.0]])  # gaps over 27.6
    probs = softmax(logits)
    want = softmax(logits / 4.0)
    assert np.allclose(temperature_softmax(logits, 4.0), want, atol=1e-12)
    assert np.allclose(apply_temperature(probs, 4.0), want, atol=1e-9)  # log(p) not clipped
    y = [1, 0, 0]
    assert fit_temperature(probs, y, logits) == pytest.approx(fit_temperature(probs, y), rel=1e-4)


def test_calibrated_classifier_divides_the_logits(tmp_path):
    model = tiny_encoder(tmp_path / "enc")
    (model / "calibration.json").write_text(json.dumps({"temperature": 3.0}), encoding="utf-8")
    clf = Classifier.load(model, calibrated=True, device="cpu")
    texts = ["质量很好", "太差了", "还行"]
    logits = clf.predict_logits(texts)
    from zhtune.probs import softmax

    assert np.allclose(clf.predict_proba(texts), softmax(logits / 3.0), atol=1e-7)


def test_tune_out_of_memory_fails_one_trial_only(monkeypatch, tmp_path):
    import zhtune.finetune.encoder as enc
    from zhtune.tune import run_trial

    def oom(cfg, out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(enc, "run_finetune", oom)
    with pytest.raises(ZhtuneError, match="trial 7: out of memory"):
        run_trial(7, None, Path(tmp_path))

    def bug(cfg, out):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(enc, "run_finetune", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # real bugs still surface
        run_trial(8, None, Path(tmp_path))


def test_cpu_only_fixture_hides_the_gpu(cpu_only):
    """What the exact-resume tests run under (they hold on CPU only)."""
    import os

    from zhtune.device import has_gpu, resolve_device

    assert not has_gpu() and resolve_device("auto").type == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
