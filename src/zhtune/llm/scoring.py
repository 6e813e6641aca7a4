"""Label scoring with a causal LM: a prompt per text, one or more label words per class.

The score of a label word ``w`` after the prompt ``p`` is its log-probability under the LM,
``log P(w | p) = sum_t log P(w_t | p, w_<t)`` (``score_norm: sum``) or that sum divided by
the number of tokens of ``w`` (``score_norm: mean``, length-normalised). A class with several
words scores ``logsumexp`` of its word scores (the probability that the LM continues with
*any* of them; ``word_agg: logsumexp``) or their ``max``. Predicted probabilities are the
softmax over the class scores.

Scoring is batched, and each prompt is computed once (the way lm-evaluation-harness reuses
a context): B texts and W label words (all classes together) give one forward pass over the
B prompts (left-padded; position ids count real tokens only, so padding does not change a
score), whose KV cache is expanded W times for one forward of the B*W label-word
continuations (:meth:`LabelScorer.cached_word_logprobs`). When every label word is one token
the first forward is all there is. Log-probabilities are ``logit[target] - logsumexp``,
position by position in fp32: no full-vocabulary log-softmax copy.

Training (and the B*W-row batches of :class:`ScoringCollator`) forwards full rows
``[pad..pad] [prompt] [word]``, left-padded so every word ends at the last position and the
vocabulary projection only runs on the last ``L + 1`` positions (``logits_to_keep``).

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
        # leading spaces are kept: " positive" is a normal byte-level BPE word
        ws = [str(w).rstrip() for w in ws if str(w).strip()]
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
Encoded = tuple[list[int], list[list[int]]]  # (shared prefix ids, W tails): row w = prefix+tail


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class LabelScorer:
    """Turns texts into prompts, builds the candidate batches and scores them with an LM.

    The score of class word ``w`` for text ``x`` is the log-probability of the canonical
    tokenization of the joined string ``prompt(x) + w`` (as the LM saw text in training: with
    a byte-level BPE tokenizer such as Qwen2's, ``'：正面'`` is one token, not ``'：'`` +
    ``'正面'``). Only the tokens after the part shared with the prompt's own tokenization
    are scored: the shared prefix is the same for every class and cancels in the softmax.
    User text (and label words) are tokenized with ``split_special_tokens=True``; special
    tokens are honoured only in the template and the chat template."""

    tokenizer: Any
    template: str
    label_words: dict[str, list[str]]  # label -> words, in label order
    score_norm: str = "sum"
    word_agg: str = "logsumexp"
    max_length: int = 128
    chat_template: bool = False
    word_ids: list[list[int]] = field(init=False)  # (W,) token ids of every word, alone
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
        self._specials = _special_pattern(tok)
        self.pre, self.suf = self.template.split("{text}")
        self.chat_pre, self.chat_post = self._chat_parts()
        self.pre_ids, self.suf_ids = self._ids(self.pre), self._ids(self.suf)
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
        chat = len(self._tokens(self.chat_pre, True)) + len(self._tokens(self.chat_post, True))
        fixed = len(self.prefix) + len(self.pre_ids) + len(self.suf_ids) + self.max_word + chat
        self.text_budget = self.max_length - fixed
        if self.text_budget < 1:
            raise ConfigError(
                f"config field 'max_length': {self.max_length} tokens leave no room for the text "
                f"(template and longest label word take {fixed})"
            )

    def _chat_parts(self) -> tuple[str, str]:
        """The chat template's text before and after the user message (``--chat-template``)."""
        if not self.chat_template:
            return "", ""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ConfigError(
                "config field 'chat_template': the tokenizer has no chat template "
                "(chat_template in tokenizer_config.json); use a chat/instruct model's tokenizer"
            )
        mark = "ZHTUNEUSERTEXT7F3A"
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(rendered, str) or rendered.count(mark) != 1:
            raise ConfigError("config field 'chat_template': the template does not render text")
        before, after = rendered.split(mark)
        bos = tok.bos_token
        if self.prefix and bos and before.startswith(bos):
            before = before[len(bos) :]  # the prefix adds it
        return before, after

    def _ids(self, s: str) -> list[int]:
        """Ids of ``s`` alone, special-token text split (user text, label words)."""
        if not s:
            return []
        return list(
            self.tokenizer(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )

    def _tokens(self, s: str, template: bool) -> list[int]:
        return self.tokenize([(s, template)])

    def tokenize(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        """Canonical ids of the joined pieces ``(text, is_template)``: special tokens count
        only where they occur in template pieces; the rest is tokenized as one string."""
        plain: list[str] = []  # runs of text between honoured special tokens
        ids: list[int] = []
        buf: list[str] = []
        for text, is_template in pieces:
            if not (is_template and self._specials is not None):
                buf.append(text)
                continue
            pos = 0
            for m in self._specials.finditer(text):
                buf.append(text[pos : m.start()])
                plain.append("".join(buf))
                buf = []
                plain.append(m.group(0))  # a special token, kept whole
                pos = m.end()
            buf.append(text[pos:])
        plain.append("".join(buf))
        for i, part in enumerate(plain):
            if i % 2:
                ids.append(self.tokenizer.convert_tokens_to_ids(part))
            elif part:
                ids += self._ids(part)
        return ids

    def _pieces(self, text: str) -> list[tuple[str, bool]]:
        return [(self.chat_pre, True), (self.pre, True), (text, False), (self.suf, True),
                (self.chat_post, True)]  # fmt: skip

    @property
    def labels(self) -> list[str]:
        return list(self.label_words)

    @property
    def n_words(self) -> int:
        return len(self.word_ids)

    @property
    def words(self) -> list[str]:
        return [w for ws in self.label_words.values() for w in ws]

    def truncate(self, texts: Sequence[str]) -> list[str]:
        """Each text cut after its first ``text_budget`` tokens (at a character boundary)."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True,
                             return_offsets_mapping=True)  # fmt: skip
        out = []
        for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
            if len(offsets) > self.text_budget:
                text = text[: offsets[self.text_budget - 1][1]]
            out.append(text)
        return out

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids per text: [bos] + the canonical ids of the rendered prompt."""
        if not texts:
            return []
        return [self.prefix + self.tokenize(self._pieces(t)) for t in self.truncate(texts)]

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Per text: the ids shared by all W candidate rows and each row's scored tail."""
        out: list[Encoded] = []
        words = self.words
        for t in self.truncate(texts) if texts else []:
            pieces = self._pieces(t)
            prompt = self.prefix + self.tokenize(pieces)
            rows = [self.prefix + self.tokenize([*pieces, (w, False)]) for w in words]
            k = min(common_prefix(r, prompt) for r in rows)
            k = min(k, min(len(r) for r in rows) - 1)  # every row scores >= 1 token
            shared = prompt[:k]
            if not shared:  # the first scored token needs a position to be predicted from
                shared, k = [self.pad_id], 0
                rows = [[self.pad_id, *r] for r in rows]
                k = 1
            out.append((shared, [r[k:] for r in rows]))
        return out

    def candidates(
        self, encoded: Sequence[Encoded | Sequence[int]], labels: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """All B*W rows ``shared_b + tail_bw`` (row ``b * W + w``), left-padded to T tokens.
        An item that is a plain id list is a prompt whose rows are ``prompt + word_ids[w]``.

        ``word_targets`` (B*W, T) holds the tail's ids where the tail is and -100 on the
        shared prefix and the padding (Hugging Face ``labels`` convention: not shifted)."""
        pairs = [e if isinstance(e, tuple) else (list(e), self.word_ids) for e in encoded]
        rows = [(list(sh), list(tl)) for sh, tails in pairs for tl in tails]
        input_ids, mask = _left_pad([sh + tl for sh, tl in rows], self.pad_id)  # (B*W, T)
        T = input_ids.shape[1]
        targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)  # (B*W, T)
        for i, (_, tl) in enumerate(rows):
            targets[i, T - len(tl) :] = torch.tensor(tl)
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": _positions(mask),  # (B*W, T)
            "word_targets": targets,
        }
        if labels is not None:
            batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)  # (B,)
        return batch

    def word_logprobs(
        self, lm, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each row's tail and its token count: (N,), (N,)."""
        targets = batch["word_targets"]
        L = int((targets != IGNORE).sum(-1).max())  # longest tail in these rows
        out = lm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=L + 1,
            use_cache=False,
        )
        # logits at positions T-L-1 .. T-2 predict the tokens at T-L .. T-1
        tgt = targets[:, -L:]  # (N, L)
        real = tgt != IGNORE
        tok = token_logprobs(out.logits[:, :-1], tgt.clamp(min=0))  # (N, L)
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

    def cached_word_logprobs(
        self, lm, items: Sequence[Encoded]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`word_logprobs` for B texts x W words, (B, W) sums and (B, W) token
        counts, with each text's prompt computed once instead of W times.

        1. One forward over the B cache prefixes: per text, the longest common token prefix
           of its W rows (not the prompt's own tokenization: BPE may merge the prompt's last
           characters with a word), so every row continues it with >= 1 token. Its last
           logits predict each row's first token after the prefix; prefix tokens past the
           shared ids (the same in all W rows) are scored from the logits before.
        2. Where a row has more tokens, one forward of the B*W continuations over the prefix's
           KV cache expanded W times (``DynamicCache.batch_repeat_interleave``). With every
           label word one token this step is skipped: one forward over B rows in all."""
        device = next(lm.parameters()).device
        B, W = len(items), self.n_words
        rows = [[sh + tl for tl in tails] for sh, tails in items]
        kept = [len(sh) for sh, _ in items]  # the scored part of a row is row[kept:]
        cut = [min(min(common_prefix(r, rs[0]) for r in rs), min(map(len, rs)) - 1) for rs in rows]
        ids, mask = _left_pad([rs[0][:c] for rs, c in zip(rows, cut, strict=True)], self.pad_id)
        D = max(c - k for c, k in zip(cut, kept, strict=True))  # scored tokens inside a prefix
        out = lm(input_ids=ids.to(device), attention_mask=mask.to(device),
                 position_ids=_positions(mask).to(device), logits_to_keep=D + 1,
                 use_cache=True)  # fmt: skip
        logits = out.logits  # (B, D + 1, V): positions P-D-1 .. P-1
        firsts = torch.tensor([[r[c] for r in rs] for rs, c in zip(rows, cut, strict=True)])
        sums = _last_logprobs(logits[:, -1], firsts.to(device)).float()  # (B, W)
        if D:
            tgt = torch.full((B, D), IGNORE, dtype=torch.long)  # (B, D)
            for b, (rs, c, k) in enumerate(zip(rows, cut, kept, strict=True)):
                if c > k:
                    tgt[b, D - (c - k) :] = torch.tensor(rs[0][k:c])
            tgt = tgt.to(device)
            pre = token_logprobs(logits[:, :-1], tgt.clamp(min=0)) * (tgt != IGNORE)  # (B, D)
            sums = sums + pre.sum(-1, keepdim=True)
        conts = [r[c:] for rs, c in zip(rows, cut, strict=True) for r in rs]  # (B*W,) >= 1 token
        M = max(map(len, conts)) - 1  # continuation tokens still to feed
        if M > 0:
            kv = "cache" if "cache" in out else "past_key_values"  # its name before 5.x
            cache = out[kv]
            cache.batch_repeat_interleave(W)  # (B, ...) -> (B*W, ...), row b*W + w
            inp = torch.full((B * W, M), self.pad_id, dtype=torch.long)  # right-padded
            tgt = torch.full((B * W, M), IGNORE, dtype=torch.long)
            for i, seq in enumerate(conts):
                inp[i, : len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
                tgt[i, : len(seq) - 1] = torch.tensor(seq[1:], dtype=torch.long)
            real = tgt != IGNORE
            start = torch.tensor(cut).repeat_interleave(W)[:, None]  # (B*W, 1)
            out2 = lm(input_ids=inp.to(device),
                      attention_mask=torch.cat([mask.repeat_interleave(W, 0), real.long()], 1)
                      .to(device), position_ids=(start + torch.arange(M)).to(device),
                      use_cache=True, **{kv: cache})  # fmt: skip
            tgt, real = tgt.to(device), real.to(device)
            rest = token_logprobs(out2.logits, tgt.clamp(min=0)) * real  # (B*W, M)
            sums = sums + rest.sum(-1).view(B, W)
        counts = torch.tensor([[len(t) for t in tl] for _, tl in items], device=device)
        return sums, counts

    @torch.inference_mode()
    def predict_scores(self, lm, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Class scores (N, C) in input order; texts are length-sorted into batches."""
        encoded = self.encode(texts)
        out = np.zeros((len(texts), len(self.label_words)), dtype=np.float64)
        order = np.argsort([len(sh) + max(map(len, tl)) for sh, tl in encoded], kind="stable")
        for b0 in range(0, len(order), max(1, batch_size)):
            idx = order[b0 : b0 + max(1, batch_size)]
            sums, counts = self.cached_word_logprobs(lm, [encoded[i] for i in idx])  # (B, W)
            words = self.normalise(sums, counts)
            out[idx] = self.class_scores(words.float()).double().cpu().numpy()
        return out


def items_from_candidates(batch: dict[str, torch.Tensor], W: int) -> list[Encoded]:
    """The (shared ids, W tails) per text of a :meth:`LabelScorer.candidates` batch."""
    rows = []
    for ids, m, t in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                         batch["word_targets"].tolist(), strict=True):  # fmt: skip
        row = [x for x, keep in zip(ids, m, strict=True) if keep]
        tail = [x for x in t if x != IGNORE]
        rows.append((row[: len(row) - len(tail)], tail))
    return [(rows[b][0], [tl for _, tl in rows[b : b + W]]) for b in range(0, len(rows), W)]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows left-padded to the longest: ids (N, T) and attention mask (N, T), 1 = real."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, T - len(r) :] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (left padding does not shift them)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax(logits)[target] = logit[target] - logsumexp(logits), per position, in fp32,
    without a full-vocabulary log-probability copy: (N, L, V), (N, L) -> (N, L)."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()  # (N, L)
    lse = torch.stack([logits[:, i].float().logsumexp(-1) for i in range(logits.shape[1])], 1)
    return picked - lse


def _last_logprobs(logits: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """(B, V) next-token logits, (B, W) candidate ids -> (B, W) log-probabilities."""
    return logits.gather(-1, tails).float() - logits.float().logsumexp(-1, keepdim=True)


def _special_pattern(tok: Any) -> Any:
    """A regex matching the tokenizer's special / added tokens (longest first), or None."""
    import re

    names = set(getattr(tok, "all_special_tokens", []) or [])
    names |= set(getattr(tok, "added_tokens_encoder", {}) or {})
    names = {n for n in names if n}
    if not names:
        return None
    return re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))


# --- training ------------------------------------------------------------------------------
class ScoringCollator:
    """Dataset rows ``{"input_ids": prompt ids, "labels": class id}`` -> candidate batch."""

    def __init__(self, scorer: LabelScorer) -> None:
        self.scorer = scorer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        items: list[Any] = []
        for f in features:
            packed = f.get("word_targets")
            items.append(f["input_ids"] if packed is None else (list(f["input_ids"]),
                                                                unpack_tails(packed)))  # fmt: skip
        return self.scorer.candidates(items, [int(f["labels"]) for f in features])


def pack_tails(tails: Sequence[Sequence[int]]) -> list[int]:
    """W tails as one flat list ``[len_0, *tail_0, len_1, *tail_1, ...]`` (a dataset column)."""
    return [x for t in tails for x in (len(t), *t)]


def unpack_tails(packed: Sequence[int]) -> list[list[int]]:
    out, i = [], 0
    packed = list(packed)
    while i < len(packed):
        n = int(packed[i])
        out.append([int(x) for x in packed[i + 1 : i + 1 + n]])
        i += 1 + n
    return out


def prompt_dataset(scorer: LabelScorer, texts: Sequence[str], label_ids: Sequence[int]):
    """A ``datasets.Dataset``: ``input_ids`` (the ids all candidate rows share),
    ``word_targets`` (the rows' tails, packed), ``labels`` and ``length``."""
    import datasets

    encoded = scorer.encode(texts)
    return datasets.Dataset.from_dict(
        {
            "input_ids": [sh for sh, _ in encoded],
            "word_targets": [pack_tails(tl) for _, tl in encoded],
            "labels": list(label_ids),
            "length": [len(sh) + max(map(len, tl)) for sh, tl in encoded],
        }
    )
