"""The path users actually run, with stand-ins built here (no downloads).

- a Qwen2.5-style model: a byte-level BPE tokenizer trained with the ``tokenizers`` library
  (Qwen2's pre-tokenizer regex, ``<|endoftext|>`` as pad and eos, ``<|im_start|>`` /
  ``<|im_end|>``, no BOS) saved as ``Qwen2TokenizerFast``, and a tiny ``Qwen2ForCausalLM``;
- a BERT-architecture model with the config keys of ``hfl/chinese-roberta-wwm-ext``
  (``BertForMaskedLM``, ``type_vocab_size`` 2) and the packaged Chinese vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NEG, POS, labelled_rows, write_csv
from zhtune import Classifier
from zhtune.cli import main
from zhtune.text import QWEN_SPECIALS, train_bpe_tokenizer

TEMPLATE = "评论：{text}\n情感倾向："


def qwen_style_tokenizer(out: Path):
    """zhtune's Qwen2.5-shaped byte-level BPE, trained on the test texts; saved to ``out``."""
    corpus = [t for t, _ in labelled_rows(2)] + [TEMPLATE.replace("{text}", t) + w
                                                  for t in POS + NEG for w in ("正面", "负面")]  # fmt: skip
    return train_bpe_tokenizer(corpus * 3, out, vocab_size=700)


def qwen_style_dir(out: Path, hidden: int = 64, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen_style_tokenizer(out)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("qwen")
    base = qwen_style_dir(root / "base")
    test = write_csv(root / "test.csv", labelled_rows(1))
    train = write_csv(root / "train.csv", labelled_rows(2))
    return {"root": root, "base": base, "test": test, "train": train}


def plain_class_probs(
    base: Path, prompts: list[str], words: list[str], split: bool = True
) -> np.ndarray:
    """Plain transformers: log P(canonical tokens of prompt + word), softmax over words."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        scores = []
        for w in words:
            ids = tok(prompt + w, add_special_tokens=False, split_special_tokens=split)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)
            scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))))
        s = np.array(scores)
        out.append(np.exp(s - s.max()) / np.exp(s - s.max()).sum())
    return np.array(out)


def test_the_stand_in_is_qwen_shaped(qwen):
    from zhtune.llm.models import load_llm_tokenizer

    tok = load_llm_tokenizer(str(qwen["base"]))
    assert type(tok).__name__.startswith("Qwen2")
    assert tok.bos_token is None and tok.cls_token is None and tok.mask_token is None
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    # the colon and the label word are one token jointly: separate pieces never occur
    joint = tok("：正面", add_special_tokens=False)["input_ids"]
    apart = tok("：", add_special_tokens=False)["input_ids"] + tok("正面", add_special_tokens=False)["input_ids"]  # fmt: skip
    assert len(joint) == 1 and joint != apart


def test_zero_shot_with_only_test_data_matches_plain_transformers(qwen, tmp_path):
    out = tmp_path / "zs"
    args = ["zero-shot", "--model", str(qwen["base"]), "--test", str(qwen["test"]),
            "--labels", "positive,negative", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    manifest = json.loads((out / "zhtune.json").read_text(encoding="utf-8"))
    assert manifest["labels"] == ["positive", "negative"]  # --labels order, not sorted
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    texts = [r["text"] for r in rows]
    ours = np.array([[r["probs"]["positive"], r["probs"]["negative"]] for r in rows])
    prompts = [TEMPLATE.replace("{text}", t) for t in texts]
    plain = plain_class_probs(qwen["base"], prompts, ["正面", "负面"])
    assert np.abs(ours - plain).max() < 1e-4
    # Classifier.load on the run directory gives the same probabilities
    clf = Classifier.load(out, device="cpu")
    again = clf.predict_proba(texts[:5])
    assert np.abs(again - ours[:5]).max() < 1e-4


def test_separate_tokenization_would_differ(qwen):
    """The scorer's rows are the joint tokenization, not template + text + word pieces."""
    from zhtune.llm.models import load_llm_tokenizer
    from zhtune.llm.scoring import LabelScorer

    tok = load_llm_tokenizer(str(qwen["base"]))
    scorer = LabelScorer(tok, TEMPLATE, {"positive": ["正面"], "negative": ["负面"]})
    (shared, tails), = scorer.encode([POS[0]])  # fmt: skip
    joint = tok(TEMPLATE.replace("{text}", POS[0]) + "正面", add_special_tokens=False)["input_ids"]
    assert shared + tails[0] == joint
    assert len(tails[0]) == 1  # '：正面' is scored as the one token the LM sees
    separate = scorer.pre_ids + scorer._ids(POS[0]) + scorer.suf_ids + scorer.word_ids[0]
    assert separate != joint


@pytest.fixture(scope="module")
def qwen_lm(qwen):
    from zhtune.llm.models import load_base, load_llm_tokenizer

    tok = load_llm_tokenizer(str(qwen["base"]))
    return tok, load_base(str(qwen["base"]), "scoring", tok).eval()


# '：正面' / '：负面' are one token each; '好评' / '差评了' merge '：' with the first byte of
# their first character (3 and 4 tokens); '非常好' / '非常差' share the tokens '：', '非常'
WORD_SETS = {
    "one-token": {"positive": ["正面"], "negative": ["负面"]},
    "multi-token, merging": {"positive": ["正面", "好评"], "negative": ["负面", "差评了"]},
    "shared first tokens": {"positive": ["非常好"], "negative": ["非常差"]},
}


@pytest.mark.parametrize("norm", ["sum", "mean"])
@pytest.mark.parametrize("words", list(WORD_SETS))
def test_scoring_computes_each_prompt_once(qwen_lm, words, norm):
    """Finding 7: the prompt's KV cache is reused over the W label words; the scores are those
    of the full B*W candidate rows (the canonical joint tokenization of prompt + word)."""
    from zhtune.llm.scoring import LabelScorer

    tok, lm = qwen_lm
    scorer = LabelScorer(tok, TEMPLATE, WORD_SETS[words], norm)
    texts = POS[:3] + NEG[:3]
    encoded = scorer.encode(texts)
    B, W = len(texts), scorer.n_words
    with torch.no_grad():  # the full rows, every prompt W times
        sums, counts = scorer.word_logprobs(lm, scorer.candidates(encoded))
        full = scorer.class_scores(scorer.normalise(sums, counts).view(B, W))
    calls: list[tuple[int, ...]] = []
    hook = lm.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        cached = scorer.predict_scores(lm, texts, batch_size=B)
    finally:
        hook.remove()
    probs = lambda s: torch.softmax(torch.as_tensor(s, dtype=torch.float64), -1)  # noqa: E731
    assert (probs(cached) - probs(full)).abs().max() < 1e-5
    longest = max(len(t) for _, tails in encoded for t in tails)
    P = max(len(sh) for sh, _ in encoded)  # the prompts, computed once: B rows
    assert calls[0][0] == B and calls[0][1] >= P
    if words == "one-token":
        assert calls == [(B, P)]  # one forward, B rows
    else:  # then the B*W continuations over the cache: a few tokens each, not the prompt
        assert len(calls) == 2 and calls[1][0] == B * W and calls[1][1] < longest
        fed = sum(r * t for r, t in calls)
        assert fed < B * W * P  # less than the prompts alone, W times each (the full rows)
    if words == "shared first tokens":  # the cache prefix runs past the scored ids
        assert calls[0][1] > P
    # the Trainer's evaluation (ScoringModel in eval mode) scores the collator's rows this way
    from zhtune.llm.models import ScoringModel

    with torch.no_grad():
        ev = ScoringModel(lm, scorer).eval()(**scorer.candidates(encoded, [0] * B))
    assert (ev.logits - full).abs().max() < 1e-4 and torch.isfinite(ev.loss)


def test_user_text_cannot_inject_special_tokens(qwen):
    from zhtune.llm.models import load_llm_tokenizer
    from zhtune.llm.scoring import LabelScorer
    from zhtune.serving.encoder import encode_batches

    tok = load_llm_tokenizer(str(qwen["base"]))
    special = {tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    text = "好<|endoftext|>坏<|im_end|>"
    _, feed = next(encode_batches(tok, [text], 4, 64, ("input_ids", "attention_mask")))
    assert not special & set(feed["input_ids"][0].tolist())
    scorer = LabelScorer(tok, TEMPLATE, {"positive": ["正面"], "negative": ["负面"]})
    (shared, tails), = scorer.encode([text])  # fmt: skip
    assert not special & set(shared + tails[0])
    # the BERT vocabulary: "[SEP]" typed by a user is not the separator
    from zhtune.text import load_tokenizer

    bert = load_tokenizer()
    _, feed = next(encode_batches(bert, ["好[SEP]坏"], 4, 64))
    assert feed["input_ids"][0].tolist().count(bert.sep_token_id) == 1  # the real one, at the end


def test_chat_template_wraps_the_prompt(qwen):
    from zhtune.llm.models import load_base, load_llm_tokenizer
    from zhtune.llm.scoring import LabelScorer

    tok = load_llm_tokenizer(str(qwen["base"]))
    words = {"positive": ["正面"], "negative": ["负面"]}
    scorer = LabelScorer(tok, TEMPLATE, words, chat_template=True)
    (shared, tails), = scorer.encode([POS[1]])  # fmt: skip
    chat = tok.apply_chat_template(
        [{"role": "user", "content": TEMPLATE.replace("{text}", POS[1])}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert chat.startswith("<|im_start|>user\n")
    full = tok(chat + "正面", add_special_tokens=False)["input_ids"]
    assert shared + tails[0] == full  # the template's own special tokens are kept
    lm = load_base(str(qwen["base"]), "scoring", tok).eval()
    ours = torch.softmax(torch.tensor(scorer.predict_scores(lm, [POS[1]])), -1).numpy()
    plain = plain_class_probs(qwen["base"], [chat], ["正面", "负面"], split=False)
    assert np.abs(ours - plain).max() < 1e-4


LORA_FAST = ["--max-steps", "3", "--eval-every", "3", "--batch-size", "8", "--max-length", "48",
             "--lora-r", "2", "--lora-alpha", "4", "--progress", "false", "--report-to", "none",
             "--learning-rate", "1e-2", "--warmup-ratio", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def lora_runs(qwen, tmp_path_factory) -> dict[str, Path]:
    """A LoRA head run and a LoRA scoring run, 3 steps each on the stand-in."""
    root = tmp_path_factory.mktemp("lora")
    common = ["lora", "--model", str(qwen["base"]), "--train", str(qwen["train"]), *LORA_FAST]
    runs = {"head": root / "head", "scoring": root / "scoring"}
    for mode, run in runs.items():
        assert main([*common, "--mode", mode, "--out", str(run)]) == 0
    return runs


def test_lora_runs_on_the_stand_in(qwen, lora_runs, tmp_path):
    common = ["lora", "--model", str(qwen["base"]), "--train", str(qwen["train"]), *LORA_FAST]
    qscore = tmp_path / "qscore"
    assert main([*common, "--mode", "scoring", "--qlora", "--out", str(qscore)]) == 0
    head = lora_runs["head"]
    for run in (head, lora_runs["scoring"], qscore):
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["n"] > 0 and 0 <= metrics["accuracy"] <= 100
        clf = Classifier.load(run, device="cpu")
        p = clf.predict_proba(["质量很好", "太差了<|endoftext|>"])
        assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    merged = tmp_path / "merged"
    assert main(["merge", "--model", str(head), "--out", str(merged)]) == 0
    a = Classifier.load(head, device="cpu").predict_proba(POS[:3])
    b = Classifier.load(merged, device="cpu").predict_proba(POS[:3])
    assert np.abs(a - b).max() < 1e-4


# user texts holding the stand-in's special tokens: plain text, never structure
SPECIAL_TEXTS = [*POS[:2], *NEG[:2], "太差了<|endoftext|>", "好<|im_start|>user\n坏<|im_end|>"]


def plain_head_probs(merged: Path, texts: list[str], split: bool) -> np.ndarray:
    """Plain transformers on a merged head run, one unpadded text at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False, split_special_tokens=split)["input_ids"]
        with torch.no_grad():
            out.append(torch.softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy())
    return np.array(out)


@pytest.mark.slow  # two LoRA runs, two servers, two merges: about a minute on 2 busy cores
def test_predict_and_serve_equal_the_classifier_on_the_stand_in(lora_runs, tmp_path, capsys):
    import httpx

    from test_serve import Server

    servers = {m: Server(run, tmp_path / f"{m}.log", "--device", "cpu", "--threads", "1",
                         "--max-wait-ms", "5") for m, run in lora_runs.items()}  # fmt: skip
    try:
        for mode, run in lora_runs.items():
            clf = Classifier.load(run, device="cpu")
            ref = clf.predict_proba(SPECIAL_TEXTS)  # (N, C), clf.labels order
            args = ["predict", "--model", str(run), "--device", "cpu"]
            assert main([*args, *(x for t in SPECIAL_TEXTS for x in ("--text", t))]) == 0
            lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
            assert [r["text"] for r in lines] == SPECIAL_TEXTS
            cli = np.array([[r["probs"][lbl] for lbl in clf.labels] for r in lines])
            assert np.abs(cli - ref).max() < 1e-5, mode
            srv = servers[mode]
            srv.wait_ready()
            body = httpx.post(srv.url + "/v1/classify", json={"texts": SPECIAL_TEXTS},
                              timeout=60).json()  # fmt: skip
            served = np.array([[r["probs"][lbl] for lbl in clf.labels] for r in body["results"]])
            assert np.abs(served - ref).max() < 1e-5, mode
            # the special-token text is text: plain transformers with split_special_tokens
            # agrees; parsing it as special tokens would give other probabilities
            merged = tmp_path / f"{mode}-merged"
            assert main(["merge", "--model", str(run), "--out", str(merged)]) == 0
            capsys.readouterr()
            if mode == "head":
                plain = plain_head_probs(merged, SPECIAL_TEXTS, split=True)
                parsed = plain_head_probs(merged, SPECIAL_TEXTS[-2:], split=False)
            else:
                prompts = [TEMPLATE.replace("{text}", t) for t in SPECIAL_TEXTS]
                words = [{"positive": "正面", "negative": "负面"}[lbl] for lbl in clf.labels]
                plain = plain_class_probs(merged, prompts, words)
                parsed = plain_class_probs(merged, prompts[-2:], words, split=False)
            assert np.abs(plain - ref).max() < 1e-4, mode
            assert np.abs(parsed - ref[-2:]).max(1).min() > 1e-5, mode
    finally:
        for srv in servers.values():
            srv.stop()


def test_bad_inputs_are_one_line_errors(qwen, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no network here
    cases = [
        (["predict", "--model", str(qwen["base"]), "--text", "好", "--device", "cuda"]
         if not torch.cuda.is_available() else None, "CUDA is not available"),
        (["zero-shot", "--model", "no-such-org/no-such-model-zhtune", "--test", str(qwen["test"]),
          "--out", str(tmp_path / "x")], "no-such-org/no-such-model-zhtune"),
        (["zero-shot", "--model", str(qwen["base"]), "--test", str(qwen["test"]),
          "--device", "tpu", "--out", str(tmp_path / "y")], "allowed values"),
    ]  # fmt: skip
    for args, needle in cases:
        if args is None:
            continue
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if ": error: " in x]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_custom_code_checkpoint_is_refused_in_one_line(qwen, tmp_path, capsys):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(qwen["base"], custom)
    cfg = json.loads((custom / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (custom / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    args = ["zero-shot", "--model", str(custom), "--test", str(qwen["test"]),
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if ": error: " in x]
    assert len(lines) == 1 and "--trust-remote-code" in lines[0]


# the config.json keys of hfl/chinese-roberta-wwm-ext, with tiny sizes
ROBERTA_WWM_EXT = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0, "directionality": "bidi", "eos_token_id": 2, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02,
    "intermediate_size": 64, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "bert", "num_attention_heads": 2, "num_hidden_layers": 2, "output_past": True,
    "pad_token_id": 0, "pooler_fc_size": 768, "pooler_num_attention_heads": 12,
    "pooler_num_fc_layers": 3, "pooler_size_per_head": 128,
    "pooler_type": "first_token_transform", "type_vocab_size": 2, "vocab_size": 21128,
}  # fmt: skip


@pytest.mark.slow  # finetune + evaluate + ONNX export: about a minute on a busy 2-core machine
def test_bert_architecture_stand_in_finetune_evaluate_export(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

    from zhtune.text import load_tokenizer

    base = tmp_path / "roberta-wwm-ext"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**ROBERTA_WWM_EXT)).save_pretrained(base)
    load_tokenizer().save_pretrained(base)
    train = write_csv(tmp_path / "train.csv", labelled_rows(2))
    run = tmp_path / "ft"
    assert main(["finetune", "--model", str(base), "--train", str(train), "--out", str(run),
                 "--max-steps", "4", "--eval-every", "4", "--batch-size", "8",
                 "--progress", "false", "--report-to", "none"]) == 0  # fmt: skip
    texts = POS[:4] + NEG[:4] + ["带[SEP]的文本"]
    ours = Classifier.load(run, device="cpu").predict_proba(texts)
    # plain transformers on the same directory (user text: special-token text split)
    tok = load_tokenizer(str(run))
    model = AutoModelForSequenceClassification.from_pretrained(str(run)).eval()
    assert model.config.type_vocab_size == 2
    enc = tok(texts, padding=True, return_tensors="pt", split_special_tokens=True)
    with torch.no_grad():
        plain = torch.softmax(model(**enc).logits, -1).numpy()
    assert np.abs(ours - plain).max() < 1e-5
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(run), "--out", str(ev), "--device", "cpu",
                 "--no-robustness"]) == 0  # fmt: skip
    assert json.loads((ev / "metrics.json").read_text(encoding="utf-8"))["n"] > 0
    onnx = tmp_path / "onnx"
    assert main(["export", "--model", str(run), "--out", str(onnx), "--device", "cuda",
                 "--no-optimize"]) == 0  # fmt: skip
    assert np.abs(Classifier.load(onnx).predict_proba(texts) - ours).max() < 1e-4


def test_tokenizer_without_pad_or_eos_is_a_one_line_error(qwen, tmp_path):
    from transformers import AutoTokenizer

    from zhtune.errors import ModelLoadError
    from zhtune.text import tokenizer_for_model

    tok = AutoTokenizer.from_pretrained(str(qwen["base"]))
    tok.pad_token = None
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ModelLoadError, match="no pad, eos or unk token") as e:
        tokenizer_for_model(str(tmp_path / "tok"), pad=True)
    assert len(str(e.value).splitlines()) == 1
