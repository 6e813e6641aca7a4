"""Decoder-LLM classification (LoRA, QLoRA, label scoring) on tiny Qwen2 models built in code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zhtune.llm.models import (
    ScoringModel,
    TrainableState,
    add_lora,
    load_base,
    load_llm_tokenizer,
)
from zhtune.llm.scoring import (
    DEFAULT_TEMPLATE,
    IGNORE,
    LabelScorer,
    ScoringCollator,
    parse_label_words,
    resolve_label_words,
)
from zhtune.text import load_tokenizer

LABELS = ["negative", "positive"]
TEXTS = ["质量很好，物流也快", "完全不能用", "还行吧，一般"]


def tiny_qwen2_dir(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny Qwen2 causal LM + the Chinese BERT tokenizer, saved in HF format.

    hidden is a multiple of 64: bitsandbytes' CPU 4-bit inference kernel needs it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tiny_qwen2_dir(tmp_path_factory.mktemp("llm") / "base")


@pytest.fixture(scope="module")
def tok(base_dir):
    return load_llm_tokenizer(str(base_dir))


@pytest.fixture(scope="module")
def lm(base_dir, tok):
    return load_base(str(base_dir), "scoring", tok).eval()


def hand_word_logprob(lm, prompt: list[int], word: list[int]) -> float:
    """log P(word | prompt) from one unpadded forward pass, summed token by token."""
    with torch.no_grad():
        logits = lm(torch.tensor([prompt + word])).logits[0]  # (T, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(word))


def test_tokenizer_of_a_qwen2_dir_is_the_bert_vocab(base_dir, tok):
    # transformers 5 AutoTokenizer would read it as a byte-level Qwen2 tokenizer
    builtin = load_tokenizer()
    assert type(tok).__name__.startswith("Bert") and len(tok) == len(builtin)
    assert (
        tok("负面：好", add_special_tokens=False)["input_ids"]
        == builtin("负面：好")["input_ids"][1:-1]
    )


def test_label_words_parsing_and_defaults():
    assert parse_label_words("positive=正面|好评, negative=负面") == {
        "positive": ["正面", "好评"],
        "negative": ["负面"],
    }
    assert parse_label_words({"positive": ["正面"], "negative": "负面|差评"})["negative"] == [
        "负面",
        "差评",
    ]
    assert resolve_label_words(LABELS, None) == {"negative": ["负面"], "positive": ["正面"]}
    assert resolve_label_words(["体育", "财经"], None) == {"体育": ["体育"], "财经": ["财经"]}
    # label order follows the data, not the spec
    assert list(resolve_label_words(LABELS, "positive=好,negative=坏")) == LABELS


@pytest.mark.parametrize("norm", ["sum", "mean"])
def test_multi_token_word_score_is_the_sum_or_mean_of_token_logprobs(lm, tok, norm):
    words = {"negative": ["负面", "差评了"], "positive": ["正面"]}  # 2-, 3- and 2-token words
    scorer = LabelScorer(tok, DEFAULT_TEMPLATE, words, norm, "logsumexp", 64)
    prompts = scorer.encode_prompts(TEXTS)
    assert [len(w) for w in scorer.word_ids] == [2, 3, 2]
    scores = scorer.predict_scores(lm, TEXTS, batch_size=2)  # (N, C), mixed batch lengths
    for b, prompt in enumerate(prompts):
        hand = []
        for ids in scorer.word_ids:
            s = hand_word_logprob(lm, prompt, ids)
            hand.append(s / len(ids) if norm == "mean" else s)
        neg = torch.logsumexp(torch.tensor(hand[:2]), 0).item()
        assert scores[b, 0] == pytest.approx(neg, abs=1e-4)
        assert scores[b, 1] == pytest.approx(hand[2], abs=1e-4)
    # max instead of logsumexp over a class's words
    scorer_max = LabelScorer(tok, DEFAULT_TEMPLATE, words, norm, "max", 64)
    s_max = scorer_max.predict_scores(lm, TEXTS[:1])
    w = [hand_word_logprob(lm, prompts[0], ids) for ids in scorer.word_ids[:2]]
    w = [x / len(ids) if norm == "mean" else x for x, ids in zip(w, scorer.word_ids, strict=False)]
    assert s_max[0, 0] == pytest.approx(max(w), abs=1e-4)


def test_scores_do_not_depend_on_the_batch(lm, tok):
    scorer = LabelScorer(tok, DEFAULT_TEMPLATE, resolve_label_words(LABELS, None))
    one = scorer.predict_scores(lm, TEXTS, batch_size=1)
    together = scorer.predict_scores(lm, TEXTS, batch_size=3)
    assert abs(one - together).max() < 1e-4


def test_prompt_tokens_carry_no_loss(lm, tok):
    scorer = LabelScorer(tok, DEFAULT_TEMPLATE, resolve_label_words(LABELS, None))
    prompts = scorer.encode_prompts(TEXTS[:2])
    batch = ScoringCollator(scorer)(
        [{"input_ids": p, "labels": y} for p, y in zip(prompts, [1, 0], strict=True)]
    )
    W, T = scorer.n_words, batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == (2 * W, T) and batch["labels"].tolist() == [1, 0]
    for row in range(2 * W):
        prompt, word = prompts[row // W], scorer.word_ids[row % W]
        targets = batch["word_targets"][row].tolist()
        # -100 on padding and prompt, the word's ids on the word's positions
        assert targets == [IGNORE] * (T - len(word)) + word
        assert batch["input_ids"][row, T - len(prompt) - len(word) :].tolist() == prompt + word
    # loss "classes" (the default): the cross-entropy of the class scores that predict uses
    model = ScoringModel(lm, scorer)
    with torch.no_grad():
        train_loss = model.train()(**batch).loss
        eval_logits = model.eval()(**batch).logits  # (B, C): each prompt once, KV cache
    ce = torch.nn.functional.cross_entropy(eval_logits, batch["labels"])
    assert train_loss.item() == pytest.approx(ce.item(), abs=1e-4)
    # loss "lm": the LM loss of the gold words alone (HF labels -100 on the prompt)
    model = ScoringModel(lm, scorer, loss="lm")
    model.train()
    with torch.no_grad():
        loss = model(**batch).loss
        hf = []
        for prompt, y in zip(prompts, [1, 0], strict=True):
            word = scorer.word_ids[y]
            labels = torch.tensor([[IGNORE] * len(prompt) + word])
            out = lm(torch.tensor([prompt + word]), labels=labels)  # mean over word tokens
            hf.append(out.loss * len(word))
    assert loss.item() == pytest.approx(torch.stack(hf).mean().item(), abs=1e-4)
    model.eval()


def _batch_for(mode: str, tok, scorer=None):
    if mode == "head":
        enc = tok(TEXTS[:2], padding=True, return_tensors="pt", return_token_type_ids=False)
        return {**enc, "labels": torch.tensor([1, 0])}
    prompts = scorer.encode_prompts(TEXTS[:2])
    return ScoringCollator(scorer)(
        [{"input_ids": p, "labels": y} for p, y in zip(prompts, [1, 0], strict=True)]
    )


@pytest.mark.parametrize("mode", ["head", "scoring"])
def test_lora_trains_adapters_and_head_not_the_base(base_dir, tok, mode):
    torch.manual_seed(0)
    base = load_base(str(base_dir), mode, tok, LABELS)
    model = add_lora(base, mode, 4, 8, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
    scorer = None
    if mode == "scoring":
        scorer = LabelScorer(tok, DEFAULT_TEMPLATE, resolve_label_words(LABELS, None))
        model = ScoringModel(model, scorer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    if mode == "head":  # the new head trains (a copy saved with the adapter)
        assert any("score.modules_to_save" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    batch = _batch_for(mode, tok, scorer)
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # every LoRA matrix (and the head) moved, nothing else


def test_trainable_state_dict_holds_only_trainable_weights(base_dir, tok):
    scorer = LabelScorer(tok, DEFAULT_TEMPLATE, resolve_label_words(LABELS, None))
    base = load_base(str(base_dir), "scoring", tok)
    model = ScoringModel(add_lora(base, "scoring", 2, 4, 0.0, ["q_proj"]), scorer)
    assert isinstance(model, TrainableState)
    sd = model.state_dict()
    assert sd and all("lora_" in k for k in sd)
    zeroed = {k: torch.zeros_like(v) for k, v in sd.items()}
    result = model.load_state_dict(zeroed, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(float(v.abs().sum()) == 0 for v in model.state_dict().values())


def test_qlora_layers_are_4bit_and_a_cpu_training_step_runs(base_dir, tok):
    import bitsandbytes as bnb

    base = load_base(str(base_dir), "head", tok, LABELS, qlora=True)
    attn = base.model.layers[0].self_attn
    assert isinstance(attn.q_proj, bnb.nn.Linear4bit) and attn.q_proj.weight.dtype == torch.uint8
    assert attn.q_proj.weight.quant_state.quant_type == "nf4"
    assert not isinstance(base.score, bnb.nn.Linear4bit)  # the head stays full precision
    model = add_lora(base, "head", 4, 8, 0.0, ["q_proj", "v_proj"], qlora=True)
    packed = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(**_batch_for("head", tok)).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n], v) for n, v in lora_b.items())
    frozen = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(frozen, packed)
