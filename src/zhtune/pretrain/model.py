"""The pretraining model and what touches its tensors: building a RoBERTa (MLM) or Qwen2
(CLM) from the config, the sparse output head (:func:`predict_targets`), the held-out
evaluation, the optimizer, and the collators."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from zhtune.pretrain.loop import PretrainConfig


def load_init(cfg: PretrainConfig, tokenizer) -> torch.nn.Module:
    """``cfg.init_from``'s weights (safetensors only, fp32) for continued pretraining."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from zhtune.errors import ModelLoadError

    auto: Any = AutoModelForMaskedLM if cfg.objective == "mlm" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(str(cfg.init_from), use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"init_from: cannot load {cfg.init_from} for {cfg.objective}: {e}"
        ) from None
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows < len(tokenizer):
        raise ModelLoadError(
            f"init_from: {cfg.init_from} has {rows} "
            f"embeddings but the tokenizer {len(tokenizer)} entries; use the model's tokenizer"
        )
    return model


def body_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (``model.roberta``/``bert``/``model``) and the output head
    (``lm_head``/``cls``): the model's one child that is not the body."""
    body: Any = model.base_model
    heads = [m for n, m in model.named_children() if m is not body]
    if len(heads) != 1:
        from zhtune.errors import ModelLoadError

        raise ModelLoadError(f"{type(model).__name__}: expected a body and one output head")
    return body, heads[0]


def build_model(cfg: PretrainConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised standard HF model (seeded by ``cfg.seed``), or ``init_from``'s."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, RobertaConfig, RobertaForMaskedLM

    from zhtune.pretrain.masking import boundary_ids, pad_id

    if cfg.objective == "electra":
        from zhtune.pretrain.electra import build_pair

        return build_pair(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        return load_init(cfg, tokenizer)
    # positions beyond max_seq_length stay untrained but let fine-tuning use up to 512 tokens
    positions = max(cfg.max_seq_length, 512)
    start, end = boundary_ids(tokenizer)  # [CLS]/[SEP], else bos (may be None)/eos
    ids: dict[str, Any] = {
        "pad_token_id": pad_id(tokenizer),
        "bos_token_id": start,
        "eos_token_id": end,
    }
    if cfg.arch == "roberta":
        encoder_config = RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            # RoBERTa numbers positions from pad_token_id + 1
            max_position_embeddings=positions + tokenizer.pad_token_id + 1,
            type_vocab_size=cfg.type_vocab_size,
            **ids,
        )
        return RobertaForMaskedLM(encoder_config)
    decoder_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        attention_dropout=cfg.dropout,
        use_cache=True,
        **ids,
    )
    return Qwen2ForCausalLM(decoder_config)


def predict_targets(model, batch: dict, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the positions that are scored, and only there.

    MLM: the encoder runs on the whole batch; the LM head (dense, gelu, norm, vocabulary
    projection) only on the M masked positions. CLM: the head only on positions whose next
    token is real (not padding). Returns logits (M, V) and targets (M,).
    """
    if objective == "electra":  # generator and discriminator outputs (see electra.predict)
        from zhtune.pretrain.electra import predict

        return predict(model, batch)  # type: ignore[return-value]
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
    body, head = body_and_head(model)  # roberta/bert/model, lm_head/cls
    hidden = body(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
    if objective == "mlm":
        scored = batch["labels"] != -100  # (B, T), True at masked positions
        logits = head(hidden[scored])  # (M, H) -> (M, V)
        return logits, batch["labels"][scored]  # (M, V), (M,)
    scored = attention_mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1
    logits = head(hidden[:, :-1][scored])  # (M, H) -> (M, V)
    return logits, input_ids[:, 1:][scored]  # (M, V), (M,)


def check_tokenizer(tokenizer, objective: str) -> None:
    """One-line errors for a tokenizer the objective cannot use."""
    from zhtune.errors import ConfigError
    from zhtune.pretrain.masking import boundary_ids, pad_id

    name = type(tokenizer).__name__
    if objective in ("mlm", "electra") and tokenizer.mask_token_id is None:
        raise ConfigError(
            f"tokenizer_path: {name} has no mask token, which objective {objective} needs "
            "(use objective clm, or a tokenizer with [MASK] / <mask>)"
        )
    if boundary_ids(tokenizer)[1] is None or pad_id(tokenizer) is None:
        raise ConfigError(f"tokenizer_path: {name} has no [SEP]/eos token to end a text with")


def set_generation_ids(model, tokenizer, objective: str):
    """For CLM: the saved tokenizer and generation config say which token starts, ends and
    pads a text (BERT vocabularies: [CLS] text [SEP]; BPE ones keep their own bos/eos).
    Returns the tokenizer to save (a copy when it is changed; the caller's is untouched)."""
    import copy

    from zhtune.pretrain.masking import boundary_ids, pad_id

    if objective != "clm":
        return tokenizer
    start, end = boundary_ids(tokenizer)
    if tokenizer.eos_token is None or (tokenizer.bos_token is None and tokenizer.cls_token):
        tokenizer = copy.deepcopy(tokenizer)
        if tokenizer.bos_token is None and tokenizer.cls_token is not None:
            tokenizer.bos_token = tokenizer.cls_token
        if tokenizer.eos_token is None:
            tokenizer.eos_token = tokenizer.sep_token
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = pad_id(tokenizer), end, start
    return tokenizer


COMPILE_WIDTH = 32  # with compile: batch widths are multiples of this (a few shapes only)


def make_collator(cfg: PretrainConfig, tokenizer, seed: int):
    """Whole-word masking (MLM) or padding only (CLM); its ``generator`` is seeded."""
    from zhtune.pretrain.masking import CausalCollator, WholeWordMaskCollator

    multiple = COMPILE_WIDTH if getattr(cfg, "compile", False) else 1
    if cfg.objective in ("mlm", "electra"):
        return WholeWordMaskCollator(
            tokenizer, cfg.mask_prob, seed=seed, pad_to_multiple_of=multiple
        )
    return CausalCollator(tokenizer, pad_to_multiple_of=multiple, seed=seed)


def compile_body(model: torch.nn.Module, objective: str) -> None:
    """``torch.compile`` the transformer body in place (parameter names unchanged, so
    checkpoints and the saved model are the same). The sparse head is left eager: the number
    of scored positions changes every step."""
    body_and_head(model)[0].compile(dynamic=False)


def param_counts(model) -> dict[str, int]:
    """Total, embedding (token, position, type) and output-layer (LM head) parameters."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    for name, p in model.named_parameters():
        if "position_embeddings" in name or "token_type_embeddings" in name:
            emb += p.numel()
    head = 0
    if hasattr(model, "lm_head"):
        tied = {id(model.get_input_embeddings().weight)}
        head = sum(p.numel() for p in model.lm_head.parameters() if id(p) not in tied)
    return {
        "total": total,
        "embedding": emb,
        "lm_head_extra": head,
        "non_embedding": total - emb - head,
    }


# --- evaluation -------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model, chunks, cfg: PretrainConfig, tokenizer, device, autocast, batch_size: int | None = None
) -> dict:
    """Held-out loss, accuracy (argmax == target) and perplexity; masks are seeded, so the
    same chunks are scored the same way every time."""
    from zhtune.pretrain.corpus import batch_order

    if cfg.objective == "electra":
        from zhtune.pretrain import electra

        return electra.evaluate(model, chunks, cfg, tokenizer, device, autocast, batch_size)
    if len(chunks) == 0:
        return {}
    was_training = model.training
    model.eval()
    collate = make_collator(cfg, tokenizer, seed=cfg.seed + 1)
    loss_sum, correct, n = 0.0, 0, 0
    size = batch_size or cfg.batch_size  # the masks depend on it: pass the same in every run
    for idx in batch_order(chunks.lengths, size, cfg.seed, 0, group_by_length=True):
        batch = {k: v.to(device) for k, v in collate([chunks[i] for i in idx]).items()}
        with autocast():
            logits, target = predict_targets(model, batch, cfg.objective)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += int((logits.argmax(-1) == target).sum())
        n += target.numel()
    model.train(was_training)
    loss = loss_sum / max(n, 1)
    return {
        "eval_loss": round(loss, 5),
        "eval_accuracy": round(correct / max(n, 1), 5),
        "perplexity": round(math.exp(min(loss, 50.0)), 3),
        "eval_predicted_tokens": n,
    }


# --- training ---------------------------------------------------------------------------
def make_optimizer(model, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weight matrices only (not on biases and norms)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon)
