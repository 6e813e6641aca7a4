"""The pretraining corpus: read texts, tokenize with word ids, chunk, deduplicate, cache.

Sources (any mix): built-in datasets (all texts of all splits), a folder-per-class tree
(labels ignored) and plain ``.txt`` files (one text a line). Every document is tokenized
once (token ids plus the word of every token: the gold segmentation of ``FILE.words.txt``
beside a text file where it has one, else jieba's), split into chunks of at most
``max_seq_length`` tokens (``[CLS] ... [SEP]``; cuts fall between words where possible),
and chunks that are empty or exact duplicates are dropped and counted. The result is
cached as ``.npz`` (numpy, no pickle), keyed by the texts, the tokenizer and the length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zhtune.data.builtin import load_builtin
from zhtune.data.readers import BadRows, read_file, read_folder

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

log = logging.getLogger("zhtune")
CACHE_VERSION = 1


@dataclass
class Chunks:
    """Token chunks stored flat: chunk i is ``ids[starts[i]:starts[i+1]]``."""

    ids: np.ndarray  # (N_tokens,) int32, [CLS] body [SEP] (or bos/eos) per chunk
    wids: np.ndarray  # (N_tokens,) int32, word id within the chunk, -1 = special token
    starts: np.ndarray  # (N_chunks + 1,) int64

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per chunk, (N_chunks,)."""
        return np.diff(self.starts)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.starts[i], self.starts[i + 1]
        return self.ids[s:e], self.wids[s:e]

    def subset(self, index: np.ndarray) -> Chunks:
        """The chunks at ``index``, in that order, as a new ``Chunks``."""
        parts = [
            (self.ids[s:e], self.wids[s:e])
            for s, e in ((self.starts[i], self.starts[i + 1]) for i in index)
        ]
        return Chunks.from_list(parts)

    @staticmethod
    def from_list(parts: list[tuple[np.ndarray, np.ndarray]]) -> Chunks:
        """Store ``(ids, word_ids)`` pairs flat."""
        starts = np.zeros(len(parts) + 1, dtype=np.int64)
        starts[1:] = np.cumsum([len(p[0]) for p in parts])
        if not parts:
            empty = np.zeros(0, dtype=np.int32)
            return Chunks(empty, empty, starts)
        ids = np.concatenate([p[0] for p in parts]).astype(np.int32)
        wids = np.concatenate([p[1] for p in parts]).astype(np.int32)
        return Chunks(ids, wids, starts)


# --- reading ------------------------------------------------------------------------------
def gold_words(path: str | Path, rows: list) -> list[tuple[str, ...] | None]:
    """The gold segmentation of ``rows`` of a text file from ``FILE.words.txt`` beside it.

    ``zhtune data --pretraining-corpus OUT.txt`` writes ``OUT.words.txt``: the same lines,
    words separated by one space where a gold segmentation is known (People's Daily), the
    line unchanged otherwise. A row gets its gold words when that line joins back to the
    text; otherwise None (jieba segments it). No words file: all None.
    """
    words_file = Path(path).with_suffix(".words.txt")
    if Path(path).name.endswith(".words.txt") or not words_file.is_file():
        return [None] * len(rows)
    lines = words_file.read_text(encoding="utf-8").split("\n")
    out: list[tuple[str, ...] | None] = []
    for r in rows:
        line = lines[r.line - 1].rstrip("\r") if r.line <= len(lines) else ""
        words = tuple(w for w in line.split(" ") if w)
        out.append(words if line != r.text and "".join(words) == r.text else None)
    return out


def collect_texts(cfg: Any) -> tuple[list[str], dict]:
    """All texts from the configured sources, in a fixed order, and a per-source report.

    ``report["gold_words"]`` holds, per text, its gold word segmentation or None (see
    :func:`gold_words`; only with ``cfg.gold_segmentation``)."""
    texts: list[str] = []
    words: list[tuple[str, ...] | None] = []
    sources: dict[str, int] = {}
    bad = BadRows(mode="skip")
    for name in cfg.dataset or []:
        splits, _, _ = load_builtin(name)
        got = [r.text for split in ("train", "dev", "test") for r in splits.get(split, [])]
        sources[f"dataset:{name}"] = len(got)
        texts += got
        words += [None] * len(got)
    if cfg.data_dir:
        rows = read_folder(cfg.data_dir, cfg.categories, cfg.max_files_per_category, bad)
        sources[f"data_dir:{cfg.data_dir}"] = len(rows)
        texts += [r.text for r in rows]
        words += [None] * len(rows)
    for path in cfg.text_files or []:
        structured = Path(path).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
        fmt = "auto" if structured else "txt"  # any other file: one text a line
        rows = read_file(path, bad=bad, fmt=fmt, need_label=False)
        sources[f"file:{path}"] = len(rows)
        texts += [r.text for r in rows]
        use_gold = getattr(cfg, "gold_segmentation", True) and not structured
        words += gold_words(path, rows) if use_gold else [None] * len(rows)
    report = {"texts_per_source": sources, "texts": len(texts), "bad_rows": bad.summary()}
    report["gold_segmented_texts"] = sum(w is not None for w in words)
    report["gold_words"] = words
    return texts, report


# --- tokenizing and chunking --------------------------------------------------------------
def tokenize_doc(
    text: str, tokenizer, words: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (no special tokens) and the word index of every token (gold ``words`` when
    given, else jieba's)."""
    from zhtune.text import word_ids_from_offsets, word_spans

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    spans = word_spans(text, list(words) if words else None)
    wids = word_ids_from_offsets(enc["offset_mapping"], spans)
    return (
        np.asarray(enc["input_ids"], dtype=np.int32),
        np.asarray([-1 if w is None else w for w in wids], dtype=np.int64),
    )


def chunk_spans(wids: np.ndarray, body: int) -> list[tuple[int, int]]:
    """Cut a document of ``len(wids)`` tokens into spans of at most ``body`` tokens.

    A cut that would split a word moves back to the word's start (unless the word alone is
    longer than ``body``).
    """
    spans, start, n = [], 0, len(wids)
    while start < n:
        end = min(start + body, n)
        if end < n and wids[end] >= 0 and wids[end] == wids[end - 1]:
            s = end - 1
            while s > start and wids[s - 1] == wids[end]:
                s -= 1
            if s > start:
                end = s
        spans.append((start, end))
        start = end
    return spans


def chunk_doc(
    ids: np.ndarray, wids: np.ndarray, max_seq_length: int, cls_id: int | None, sep_id: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[CLS] body [SEP]`` chunks with word ids renumbered per chunk (-1 at CLS/SEP);
    ``cls_id`` None (a tokenizer without cls and bos, e.g. Qwen2's): ``body eos``."""
    from zhtune.pretrain.masking import compact_word_ids

    head = [] if cls_id is None else [cls_id]
    out = []
    for s, e in chunk_spans(wids, max_seq_length - 1 - len(head)):
        w = compact_word_ids(wids[s:e])
        out.append(
            (
                np.concatenate([head, ids[s:e], [sep_id]]).astype(np.int32),
                np.concatenate([[-1] * len(head), w, [-1]]).astype(np.int32),
            )
        )
    return out


_worker_tok = None


def _init_worker(tokenizer_path: str | None) -> None:
    """Load the tokenizer once per worker process."""
    global _worker_tok
    from zhtune.text import load_tokenizer

    _worker_tok = load_tokenizer(tokenizer_path)


def _tokenize_in_worker(item: tuple[str, tuple[str, ...] | None]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tokenize_doc` with the worker's tokenizer."""
    return tokenize_doc(item[0], _worker_tok, item[1])


def build_chunks(
    texts: list[str], tokenizer, cfg: Any, words: list[tuple[str, ...] | None] | None = None
) -> tuple[Chunks, dict[str, int]]:
    """Tokenize, chunk and deduplicate; returns the chunks and the drop counts. ``words``:
    each text's gold segmentation (or None: jieba)."""
    from tqdm.auto import tqdm

    from zhtune.pretrain.masking import boundary_ids

    words = words if words is not None else [None] * len(texts)
    start_id, end_id = boundary_ids(tokenizer)
    if end_id is None:
        from zhtune.errors import ConfigError

        raise ConfigError(
            "tokenizer_path: the tokenizer has neither a [SEP] nor an eos token to end a chunk"
        )
    pool: Pool | None = None
    docs: Iterator[tuple[np.ndarray, np.ndarray]]
    if cfg.num_workers > 0:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(  # no fork: torch and tokenizer threads
            cfg.num_workers, initializer=_init_worker, initargs=(cfg.tokenizer_path,)
        )
        docs = pool.imap(_tokenize_in_worker, zip(texts, words, strict=True), chunksize=16)
    else:
        docs = (tokenize_doc(t, tokenizer, w) for t, w in zip(texts, words, strict=True))
    seen: set[bytes] = set()
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    empty = dup = 0
    try:
        for ids, wids in tqdm(docs, total=len(texts), desc="tokenizing", disable=None):
            if len(ids) == 0:
                empty += 1
                continue
            for chunk in chunk_doc(ids, wids, cfg.max_seq_length, start_id, end_id):
                key = chunk[0].tobytes()
                if key in seen:
                    dup += 1
                    continue
                seen.add(key)
                parts.append(chunk)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return Chunks.from_list(parts), {"empty_chunks_dropped": empty, "duplicate_chunks_dropped": dup}


# --- cache --------------------------------------------------------------------------------
def cache_key(texts: list[str], tokenizer, max_seq_length: int, words: list | None = None) -> str:
    """A hash of the texts (and their gold segmentation), the tokenizer's vocabulary and
    class, and the chunk length."""
    h = hashlib.sha256()
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps([CACHE_VERSION, max_seq_length, vocab], ensure_ascii=False).encode())
    h.update(type(tokenizer).__name__.encode())
    for i, t in enumerate(texts):
        h.update(t.encode("utf-8"))
        if words and words[i]:
            h.update(b"\x01" + " ".join(words[i]).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def resolve_cache_dir(cache_dir: str | None) -> Path | None:
    """``auto`` (``$XDG_CACHE_HOME`` or ~/.cache, then zhtune/pretrain-corpus), none, a path."""
    if cache_dir in (None, "", "none"):
        return None
    if cache_dir == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "zhtune" / "pretrain-corpus"
    return Path(cache_dir)


def _load_cached(path: Path) -> tuple[Chunks, dict] | None:
    """The cached chunks and drop counts, or None (missing or broken cache)."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            chunks = Chunks(z["ids"], z["wids"], z["starts"])
        return chunks, json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring a broken corpus cache %s (%s)", path, e)
        return None


def _save_cached(path: Path, chunks: Chunks, stats: dict) -> None:
    """Write the cache atomically; a failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, ids=chunks.ids, wids=chunks.wids, starts=chunks.starts)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(stats), encoding="utf-8")
    except OSError as e:
        log.warning("cannot write the corpus cache %s (%s); continuing without it", path, e)


# --- the corpus ---------------------------------------------------------------------------
def load_corpus(cfg: Any, tokenizer) -> tuple[Chunks, Chunks, dict]:
    """Train and held-out chunks (a seeded random share ``eval_ratio``) and the data report."""
    t0 = time.perf_counter()
    texts, report = collect_texts(cfg)
    words = report.pop("gold_words")
    key = cache_key(texts, tokenizer, cfg.max_seq_length, words)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    path = cache_dir / f"chunks-{key}.npz" if cache_dir else None
    cached = _load_cached(path) if path else None
    if cached:
        chunks, stats = cached
        report["cache"] = f"hit ({path})"
    else:
        chunks, stats = build_chunks(texts, tokenizer, cfg, words)
        if path:
            _save_cached(path, chunks, stats)
        report["cache"] = f"written ({path})" if path else "off"
    n = len(chunks)
    n_eval = 0
    if n >= 2 and cfg.eval_ratio > 0:
        n_eval = min(cfg.max_eval_chunks, max(1, round(n * cfg.eval_ratio)), n - 1)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    eval_chunks = chunks.subset(np.sort(perm[:n_eval]))
    train_chunks = chunks.subset(np.sort(perm[n_eval:]))
    report.update(stats)
    report.update(
        {
            "corpus_key": key,
            "chunks_kept": n,
            "train_chunks": len(train_chunks),
            "eval_chunks": len(eval_chunks),
            "train_tokens": int(train_chunks.lengths.sum()),
            "eval_tokens": int(eval_chunks.lengths.sum()),
            "max_seq_length": cfg.max_seq_length,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    return train_chunks, eval_chunks, report


def batch_order(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[np.ndarray]:
    """The batches of one epoch (chunk indices), a pure function of ``(seed, epoch)``.

    With ``group_by_length`` the shuffled chunks are sorted by length inside windows of 50
    batches and the batches shuffled again, so a batch holds chunks of similar length (less
    padding) while the order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    idx = rng.permutation(len(lengths))
    if group_by_length:
        window = batch_size * 50
        idx = (
            np.concatenate(
                [
                    w[np.argsort(-lengths[w], kind="stable")]
                    for w in np.array_split(idx, max(1, -(-len(idx) // window)))
                ]
            )
            if len(idx)
            else idx
        )
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
