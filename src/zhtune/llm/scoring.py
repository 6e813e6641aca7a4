"""Label scoring with a causal LM: a prompt per text, one or more label words per class.

The score of a label word ``w`` after the prompt ``p`` is its log-probability under the LM,
``log P(w | p) = sum_t log P(w_t | p, w_<t)`` (``score_norm: sum``) or that sum divided by
the number of tokens of ``w`` (``score_norm: mean``, length-normalised). A class with several
words scores ``logsumexp`` of its word scores (the probability that the LM continues with
*any* of them; ``word_agg: logsumexp``) or their ``max``. Predicted probabilities are the
softmax over the class scores.

Scoring is batched: B texts and W label words (all classes together) give one forward pass
over B*W rows ``[pad..pad] [prompt] [word]``. Rows are *left*-padded, so every label word
ends at the last position and the vocabulary projection only runs on the last ``L + 1``
positions (``logits_to_keep``; L = the longest word in tokens) instead of on the whole
prompt. Position ids count real tokens only, so padding does not change a score.

Training (``zhtune lora --mode scoring``) maximises ``log sum_{w in gold class} P(w | p)``;
for one word per class this is the usual LM loss on the word's tokens, with the prompt and
the padding masked out (target -100).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zhtune.errors import ConfigError

DEFAULT_TEMPLATE = "评论：{text}\n情感倾向："
# default label words for sentiment label names (used when every label is one of these)
SENTIMENT_WORDS = {"positive": "正面", "negative": "负面", "neutral": "中性"}
SCORE_NORMS = ("sum", "mean")
WORD_AGGS = ("logsumexp", "max")
IGNORE = -100


# --- config values -----------------------------------------------------------------------
def parse_template(template: str) -> str:
    """The template with ``\\n`` escapes turned into newlines; must contain ``{text}`` once."""
    t = str(template).replace("\\n", "\n")
    if t.count("{text}") != 1:
        raise ConfigError(
            f"config field 'prompt_template': must contain {{text}} exactly once, got {template!r}"
        )
    return t


def parse_label_words(spec: Any) -> dict[str, list[str]] | None:
    """``"positive=正面|好评,negative=负面"`` or a mapping ``{label: "w1|w2" | [w1, w2]}``."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "auto")):
        return None
    items: list[tuple[str, Any]]
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for part in spec.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(
                    f"config field 'label_words': {part.strip()!r} is not LABEL=WORD[|WORD...] "
                    "(e.g. positive=正面|好评,negative=负面)"
                )
            label, words = part.split("=", 1)
            items.append((label, words))
    else:
        raise ConfigError(f"config field 'label_words': expected a string or mapping, got {spec!r}")
    out: dict[str, list[str]] = {}
    for label, words in items:
        ws = words if isinstance(words, list) else str(words).split("|")
        ws = [str(w).strip() for w in ws if str(w).strip()]
        if not str(label).strip() or not ws:
            raise ConfigError(f"config field 'label_words': label {label!r} has no words")
        out[str(label).strip()] = ws
    return out


def resolve_label_words(labels: Sequence[str], spec: Any) -> dict[str, list[str]]:
    """Words per label, in label order: the given mapping, else defaults (see module doc)."""
    given = parse_label_words(spec)
    if given is None:
        if all(lbl in SENTIMENT_WORDS for lbl in labels):
            return {lbl: [SENTIMENT_WORDS[lbl]] for lbl in labels}
        return {lbl: [lbl] for lbl in labels}
    unknown = [k for k in given if k not in labels]
    missing = [lbl for lbl in labels if lbl not in given]
    if unknown or missing:
        raise ConfigError(
            "config field 'label_words': "
            + (f"unknown labels {unknown}; " if unknown else "")
            + (f"no words for {missing}; " if missing else "")
            + f"the data's labels are {list(labels)}"
        )
    seen: dict[str, str] = {}
    for lbl in labels:
        for w in given[lbl]:
            if w in seen and seen[w] != lbl:
                raise ConfigError(
                    f"config field 'label_words': {w!r} is a word of both {seen[w]} and {lbl}"
                )
            seen[w] = lbl
    return {lbl: given[lbl] for lbl in labels}


def format_label_words(words: dict[str, list[str]]) -> str:
    return ",".join(f"{lbl}={'|'.join(ws)}" for lbl, ws in words.items())


# --- the scorer ----------------------------------------------------------------------------
@dataclass
class LabelScorer:
    """Turns texts into prompts, builds the candidate batches and scores them with an LM."""

    tokenizer: Any
    template: str
    label_words: dict[str, list[str]]  # label -> words, in label order
    score_norm: str = "sum"
    word_agg: str = "logsumexp"
    max_length: int = 128
    word_ids: list[list[int]] = field(init=False)  # (W,) token ids of every word
    word_class: torch.Tensor = field(init=False)  # (W,) class index of every word

    def __post_init__(self) -> None:
        if self.score_norm not in SCORE_NORMS:
            raise ConfigError(f"config field 'score_norm': allowed: {', '.join(SCORE_NORMS)}")
        if self.word_agg not in WORD_AGGS:
            raise ConfigError(f"config field 'word_agg': allowed: {', '.join(WORD_AGGS)}")
        self.template = parse_template(self.template)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        first = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.prefix = [first] if first is not None else []
        pre, suf = self.template.split("{text}")
        self.pre_ids, self.suf_ids = self._ids(pre), self._ids(suf)
        self.word_ids, classes = [], []
        for c, (label, words) in enumerate(self.label_words.items()):
            for w in words:
                ids = self._ids(w)
                if not ids:
                    raise ConfigError(f"config field 'label_words': {w!r} ({label}) has no tokens")
                if tok.unk_token_id is not None and tok.unk_token_id in ids:
                    raise ConfigError(
                        f"config field 'label_words': {w!r} ({label}) is not in the vocabulary"
                    )
                self.word_ids.append(ids)
                classes.append(c)
        self.word_class = torch.tensor(classes)
        self.max_word = max(len(w) for w in self.word_ids)
        fixed = len(self.prefix) + len(self.pre_ids) + len(self.suf_ids) + self.max_word
        self.text_budget = self.max_length - fixed
        if self.text_budget < 1:
            raise ConfigError(
                f"config field 'max_length': {self.max_length} tokens leave no room for the text "
                f"(template and longest label word take {fixed})"
            )
        if not self.prefix + self.pre_ids + self.suf_ids:
            # the first word token needs a position to be predicted from
            self.prefix = [self.pad_id]

    def _ids(self, s: str) -> list[int]:
        return list(self.tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    @property
    def labels(self) -> list[str]:
        return list(self.label_words)

    @property
    def n_words(self) -> int:
        return len(self.word_ids)

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids per text: [bos] template-before + text (truncated) + template-after."""
        if not texts:
            return []
        text_ids = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.text_budget
        )["input_ids"]
        return [
            self.prefix + self.pre_ids + list(ids[: self.text_budget]) + self.suf_ids
            for ids in text_ids
        ]

    def candidates(
        self, prompts: Sequence[Sequence[int]], labels: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """All B*W rows ``prompt_b + word_w`` (row ``b * W + w``), left-padded to T tokens.

        ``word_targets`` (B*W, T) holds the word's token ids where the word is and -100 on
        the prompt and the padding (Hugging Face ``labels`` convention: not shifted)."""
        rows = [list(p) + w for p in prompts for w in self.word_ids]
        T = max(len(r) for r in rows)
        n = len(rows)
        input_ids = torch.full((n, T), self.pad_id, dtype=torch.long)  # (B*W, T)
        mask = torch.zeros((n, T), dtype=torch.long)  # (B*W, T), 1 = real token
        targets = torch.full((n, T), IGNORE, dtype=torch.long)  # (B*W, T)
        for i, row in enumerate(rows):
            input_ids[i, T - len(row) :] = torch.tensor(row)
            mask[i, T - len(row) :] = 1
            w = self.word_ids[i % self.n_words]
            targets[i, T - len(w) :] = torch.tensor(w)
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),  # (B*W, T)
            "word_targets": targets,
        }
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)  # (B,)
        return batch

    def word_logprobs(
        self, lm, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each row's word and its token count: (N,), (N,)."""
        targets = batch["word_targets"]
        L = int((targets != IGNORE).sum(-1).max())  # longest word in these rows
        out = lm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=L + 1,
            use_cache=False,
        )
        # logits at positions T-L-1 .. T-2 predict the tokens at T-L .. T-1
        logp = F.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (N, L, V)
        tgt = targets[:, -L:]  # (N, L)
        real = tgt != IGNORE
        tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, L)
        return (tok * real).sum(-1), real.sum(-1)

    def class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, W) word scores -> (B, C) class scores (logsumexp or max over each class's words)."""
        C = len(self.label_words)
        cls = self.word_class.to(word_scores.device)
        scores = torch.full((word_scores.shape[0], C), float("-inf"), device=word_scores.device)
        for c in range(C):
            s = word_scores[:, cls == c]  # (B, W_c)
            scores[:, c] = s.logsumexp(-1) if self.word_agg == "logsumexp" else s.max(-1).values
        return scores

    def normalise(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return sums / counts if self.score_norm == "mean" else sums

    @torch.inference_mode()
    def predict_scores(self, lm, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Class scores (N, C) in input order; texts are length-sorted into batches."""
        prompts = self.encode_prompts(texts)
        out = np.zeros((len(texts), len(self.label_words)), dtype=np.float64)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        device = next(lm.parameters()).device
        for b0 in range(0, len(order), max(1, batch_size)):
            idx = order[b0 : b0 + max(1, batch_size)]
            batch = self.candidates([prompts[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            sums, counts = self.word_logprobs(lm, batch)
            words = self.normalise(sums, counts).view(len(idx), self.n_words)  # (B, W)
            out[idx] = self.class_scores(words).double().cpu().numpy()
        return out


# --- training ------------------------------------------------------------------------------
class ScoringCollator:
    """Dataset rows ``{"input_ids": prompt ids, "labels": class id}`` -> candidate batch."""

    def __init__(self, scorer: LabelScorer) -> None:
        self.scorer = scorer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.scorer.candidates(
            [f["input_ids"] for f in features], [int(f["labels"]) for f in features]
        )


def prompt_dataset(scorer: LabelScorer, texts: Sequence[str], label_ids: Sequence[int]):
    """A ``datasets.Dataset`` with ``input_ids`` (prompt), ``labels`` and ``length``."""
    import datasets

    prompts = scorer.encode_prompts(texts)
    return datasets.Dataset.from_dict(
        {
            "input_ids": prompts,
            "labels": list(label_ids),
            "length": [len(p) + scorer.max_word for p in prompts],
        }
    )
