"""ELECTRA pretraining (replaced-token detection; Clark et al. 2020), ``--objective electra``.

A small generator (``ElectraForMaskedLM``, ``generator_size`` × the discriminator's hidden
size, heads and feed-forward size; same depth) and the discriminator
(``ElectraForPreTraining``) are trained together on whole-word-masked batches (the MLM
collator):

1. the generator predicts the masked tokens (its LM head only at the M masked positions,
   as :func:`zhtune.pretrain.model.predict_targets` does for MLM);
2. a replacement is sampled at each masked position from the generator's softmax (a seeded
   ``torch.Generator``; no gradient flows through the sample);
3. the discriminator reads the corrupted text and tells, at every real (non-padding) token,
   whether it was replaced (a sampled token equal to the original counts as original).

loss = mean CE(generator, masked) + ``electra_disc_weight`` × mean BCE(discriminator, real)

As in the paper the two models share the token, position and type embeddings (the
generator's smaller hidden size reads them through its ``embeddings_project``; its LM head
is tied to the shared word embeddings). The run directory holds the discriminator (what
fine-tuning uses) and the generator in ``RUN/generator/``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from zhtune.pretrain.config import PretrainConfig


class ElectraPair(torch.nn.Module):
    """The generator and the discriminator, one module for the optimizer and checkpoints."""

    def __init__(self, generator: Any, discriminator: Any, seed: int) -> None:
        super().__init__()
        self.generator = generator  # ElectraForMaskedLM
        self.discriminator = discriminator  # ElectraForPreTraining
        # shared embeddings: the generator reads the discriminator's (and ties its head to them)
        shared = discriminator.electra.embeddings
        generator.electra.embeddings = shared
        generator.generator_lm_head.weight = shared.word_embeddings.weight
        self.seed = seed
        self.sampler: torch.Generator | None = None  # made on first use, on the model's device

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.discriminator.get_input_embeddings()

    def sampler_on(self, device: torch.device) -> torch.Generator:
        """The seeded generator of the replacements (one stream per process)."""
        if self.sampler is None or self.sampler.device != device:
            import torch.distributed as dist

            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            self.sampler = torch.Generator(device=device).manual_seed(self.seed + 7919 * (rank + 1))
        return self.sampler

    def save_pretrained(self, out, **kw) -> None:
        """The discriminator as the run's model, the generator in ``out/generator``."""
        from pathlib import Path

        self.discriminator.save_pretrained(out, **kw)
        self.generator.save_pretrained(Path(out) / "generator", **kw)


def build_pair(cfg: PretrainConfig, tokenizer) -> ElectraPair:
    """A randomly initialised generator and discriminator (seeded by ``cfg.seed``)."""
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    from zhtune.pretrain.masking import pad_id

    torch.manual_seed(cfg.seed)
    shape = generator_shape(cfg)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        embedding_size=cfg.hidden_size,  # shared embeddings: the discriminator's width
        num_hidden_layers=cfg.num_hidden_layers,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=max(cfg.max_seq_length, 512),  # fine-tuning may use 512
        type_vocab_size=cfg.type_vocab_size,
        pad_token_id=pad_id(tokenizer),
    )
    disc = ElectraForPreTraining(
        ElectraConfig(
            hidden_size=cfg.hidden_size,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            **common,
        )
    )
    gen = ElectraForMaskedLM(ElectraConfig(**shape, **common))
    return ElectraPair(gen, disc, cfg.seed)


def generator_shape(cfg: PretrainConfig) -> dict[str, Any]:
    """The generator's hidden size, heads and feed-forward size: ``generator_size`` × the
    discriminator's (at least 1 head; heads divide the hidden size)."""
    hidden = max(1, round(cfg.hidden_size * cfg.generator_size))
    heads = max(1, round(cfg.num_heads * cfg.generator_size))
    while hidden % heads:
        heads -= 1
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": max(1, round(cfg.intermediate_size * cfg.generator_size)),
    }


def predict(
    pair: ElectraPair, batch: dict, sampler: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """One ELECTRA forward on a masked batch.

    Returns generator logits (M, V) and targets (M,) at the masked positions, discriminator
    logits (N,) and 0/1 targets (N,) at the N real tokens, and the corrupted input (B, T).
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    masked = labels != -100  # (B, T)
    gen: Any = pair.generator
    hidden = gen.electra(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, Hg)
    gen_logits = gen.generator_lm_head(gen.generator_predictions(hidden[masked]))  # (M, V)
    gen_target = labels[masked]  # (M,)
    with torch.no_grad():  # sample the replacements: no gradient through the sample
        probs = F.softmax(gen_logits.detach().float(), dim=-1)  # (M, V)
        sampler = sampler or pair.sampler_on(input_ids.device)
        sampled = torch.multinomial(probs, 1, generator=sampler).squeeze(1)  # (M,)
        original = torch.where(masked, labels, input_ids)  # (B, T): the uncorrupted text
        corrupted = original.clone()
        corrupted[masked] = sampled
        real = attention_mask.bool()  # (B, T)
        disc_target = (corrupted != original)[real].float()  # (N,)
    disc: Any = pair.discriminator
    d_hidden = disc.electra(input_ids=corrupted, attention_mask=attention_mask)[0]  # (B, T, H)
    disc_logits = disc.discriminator_predictions(d_hidden[real])  # (N, H) -> (N,)
    return gen_logits, gen_target, disc_logits, disc_target, corrupted


def n_real(batch: dict) -> int:
    """Real (non-padding) tokens: where the discriminator's loss is taken."""
    return int(batch["attention_mask"].sum())


def step_loss(global_batch: dict, cfg: PretrainConfig):
    """The per-micro-batch loss for ``optimizer_step``, in summed-generator-CE units: the
    loop divides it by the global batch's M masked tokens, so the step's loss is
    ``mean CE + disc_weight × mean BCE`` over the whole global batch (N real tokens)."""
    scale = cfg.electra_disc_weight * max(int((global_batch["labels"] != -100).sum()), 1)
    scale /= max(n_real(global_batch), 1)

    def loss_of(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        gen_logits, gen_target, disc_logits, disc_target = out[:4]
        gen_sum = F.cross_entropy(gen_logits.float(), gen_target, reduction="sum")
        disc_sum = F.binary_cross_entropy_with_logits(
            disc_logits.float(), disc_target, reduction="sum"
        )
        return gen_sum + scale * disc_sum

    return loss_of


def save_rng(pair: ElectraPair, device: torch.device, rng: dict) -> None:
    """Every process's sampler state into a checkpoint's ``rng`` (a collective)."""
    from zhtune.pretrain import distributed as ddp

    for r, state in enumerate(ddp.gather_rng(pair.sampler_on(device).get_state())):
        rng[f"electra.rank{r}"] = state


def load_rng(pair: ElectraPair, device: torch.device, rng: dict, rank: int) -> None:
    """Restore this process's sampler state from a checkpoint's ``rng``."""
    pair.sampler_on(device).set_state(rng[f"electra.rank{rank}"])


@torch.no_grad()
def evaluate(pair: ElectraPair, chunks, cfg: PretrainConfig, tokenizer, device, autocast,
             batch_size: int | None = None) -> dict:  # fmt: skip
    """Held-out generator MLM loss / accuracy / perplexity and the discriminator's
    replaced-token detection: loss, accuracy, AUC. Masks and samples are seeded."""
    from sklearn.metrics import roc_auc_score

    from zhtune.pretrain.corpus import batch_order
    from zhtune.pretrain.model import make_collator

    if len(chunks) == 0:
        return {}
    was_training = pair.training
    pair.eval()
    collate = make_collator(cfg, tokenizer, seed=cfg.seed + 1)
    sampler = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    gen_loss, gen_correct, m, disc_loss = 0.0, 0, 0, 0.0
    scores, targets = [], []
    size = batch_size or cfg.batch_size
    for idx in batch_order(chunks.lengths, size, cfg.seed, 0, group_by_length=True):
        batch = {k: v.to(device) for k, v in collate([chunks[i] for i in idx]).items()}
        with autocast():
            gen_logits, gen_target, disc_logits, disc_target, _ = predict(pair, batch, sampler)
        gen_loss += F.cross_entropy(gen_logits.float(), gen_target, reduction="sum").item()
        gen_correct += int((gen_logits.argmax(-1) == gen_target).sum())
        m += gen_target.numel()
        disc_loss += F.binary_cross_entropy_with_logits(
            disc_logits.float(), disc_target, reduction="sum"
        ).item()
        scores.append(disc_logits.float().cpu())
        targets.append(disc_target.cpu())
    pair.train(was_training)
    s, t = torch.cat(scores), torch.cat(targets)
    loss, d_loss = gen_loss / max(m, 1), disc_loss / max(t.numel(), 1)
    both = 0 < t.sum() < t.numel()  # AUC needs replaced and original tokens
    return {
        "eval_loss": round(loss, 5),  # the generator's MLM loss (comparable with --objective mlm)
        "eval_accuracy": round(gen_correct / max(m, 1), 5),
        "perplexity": round(math.exp(min(loss, 50.0)), 3),
        "eval_predicted_tokens": m,
        "eval_total_loss": round(loss + cfg.electra_disc_weight * d_loss, 5),
        "discriminator_eval_loss": round(d_loss, 5),
        "discriminator_accuracy": round(float(((s > 0).float() == t).float().mean()), 5),
        "discriminator_auc": round(float(roc_auc_score(t.numpy(), s.numpy())), 5) if both else None,
        "replaced_share": round(float(t.mean()), 5),
        "eval_detected_tokens": int(t.numel()),
    }
