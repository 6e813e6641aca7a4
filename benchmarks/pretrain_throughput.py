"""MLM pretraining throughput: zhtune's training step against a plain Hugging Face baseline.

Both run in this one process on the same tiny config, the same corpus chunks and the same
batch size:

- baseline: ``RobertaForMaskedLM`` (vocabulary projection at every position), examples
  padded to ``max_seq_length`` (``padding="max_length"``), ``DataCollatorForLanguageModeling``
  (token masking), fp32, AdamW + gradient clipping;
- zhtune: ``zhtune.pretrain.loop.train_step`` (vocabulary projection only at the masked
  positions), whole-word masking, padding per batch, batches grouped by length, the cached
  tokenized corpus; in fp32 and, where the CPU supports it, bf16 autocast.

The runs are interleaved in rounds so that a change in machine load hits all of them.
Tokens/s counts real (non-padding) tokens. Useful GFLOP/s for zhtune = (6 x non-embedding
parameters x tokens + 6 x (H*H + H*V) x masked tokens) / s, set against this machine's
matmul peak measured in the same run. The ratio (zhtune at the preset's precision /
baseline) is printed last.

    .venv/bin/python benchmarks/pretrain_throughput.py --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from dataclasses import replace

import numpy as np
import torch

from zhtune.config import load_config
from zhtune.pretrain.corpus import batch_order, load_corpus
from zhtune.pretrain.loop import (
    PretrainConfig,
    autocast_context,
    bf16_supported,
    build_model,
    make_collator,
    make_optimizer,
    param_counts,
    train_step,
)
from zhtune.text import load_tokenizer


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """Best observed GFLOP/s of an n x n matmul in ``dtype`` (all threads)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


class Runner:
    """Accumulates steps, tokens and seconds of one training setup across rounds."""

    def __init__(self, name: str, step_fn, batches) -> None:
        self.name, self.step_fn, self.batches = name, step_fn, batches
        self.i = 0
        self.seconds = self.cpu_seconds = 0.0
        self.tokens = self.masked = self.positions = self.steps = 0
        self.losses: list[float] = []

    def next_batch(self) -> dict:
        batch = self.batches[self.i % len(self.batches)]()
        self.i += 1
        return batch

    def run(self, seconds: float, warmup: int = 0) -> None:
        for _ in range(warmup):
            self.step_fn(self.next_batch())
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t, c = time.perf_counter(), time.process_time()
            batch = self.next_batch()  # collation (masking, padding) is timed too
            self.losses.append(self.step_fn(batch))
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.process_time() - c
            self.tokens += int(batch["attention_mask"].sum())
            self.masked += int((batch["labels"] != -100).sum())
            self.positions += batch["input_ids"].numel()
            self.steps += 1

    @property
    def tps(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pretrain-tiny.yaml")
    ap.add_argument("--seconds", type=float, default=60, help="timed seconds per setup")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per setup first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers import DataCollatorForLanguageModeling, RobertaForMaskedLM

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(PretrainConfig, args.config)
    tok = load_tokenizer(cfg.tokenizer_path)
    t0 = time.perf_counter()
    train, _, report = load_corpus(cfg, tok)
    print(
        f"corpus: {len(train)} chunks, {report['train_tokens']} tokens "
        f"(cache: {report['cache']}; {time.perf_counter() - t0:.1f} s)"
    )
    B, L = cfg.batch_size, cfg.max_seq_length
    print(
        f"config: {args.config}: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, "
        f"heads {cfg.num_heads}, ffn {cfg.intermediate_size}, seq {L}, batch {B}, "
        f"dropout {cfg.dropout}"
    )
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")

    # --- zhtune: sparse MLM head, whole-word masking, per-batch padding, length grouping
    def zhtune_runner(precision: str) -> Runner:
        zcfg = replace(cfg, precision=precision)
        model = build_model(zcfg, tok).train()
        opt = make_optimizer(model, zcfg)
        autocast, _ = autocast_context(zcfg, torch.device("cpu"))
        collate = make_collator(zcfg, tok, seed=zcfg.seed)
        order = batch_order(train.lengths, B, zcfg.seed, 0, zcfg.group_by_length)

        def step(batch: dict) -> float:
            return train_step(model, batch, opt, None, zcfg, autocast)

        batches = [lambda idx=idx: collate([train[i] for i in idx]) for idx in order]
        runner = Runner(f"zhtune {precision}", step, batches)
        runner.counts = param_counts(model)
        return runner

    # --- baseline: plain Hugging Face recipe
    def baseline_runner() -> Runner:
        model = RobertaForMaskedLM(build_model(cfg, tok).config).train()  # same shape
        opt = make_optimizer(model, cfg)
        collator = DataCollatorForLanguageModeling(tok, mlm_probability=cfg.mask_prob, seed=0)
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(train))

        def example(i: int) -> dict:  # as tokenizer(..., padding="max_length") gives them
            return tok.pad({"input_ids": train[i][0].tolist()}, padding="max_length", max_length=L)

        def step(batch: dict) -> float:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        batches = [
            lambda s=s: collator([example(i) for i in idx[s : s + B]])
            for s in range(0, len(idx) - B + 1, B)
        ]
        return Runner("HF baseline fp32", step, batches)

    have_bf16 = bf16_supported(torch.device("cpu"))
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16) if have_bf16 else float("nan")
    runners = [baseline_runner(), zhtune_runner("fp32")]
    if have_bf16:
        runners.append(zhtune_runner("bf16"))
    for r in range(args.rounds):
        for runner in runners:
            runner.run(args.seconds / args.rounds, warmup=args.warmup if r == 0 else 0)
    # the peak is measured before and after the runs (the machine may be shared); best wins
    peak32 = max(matmul_peak(torch.float32), peak32)
    peak16 = max(matmul_peak(torch.bfloat16), peak16) if have_bf16 else float("nan")

    H, V = cfg.hidden_size, len(tok)
    print(
        f"\nmatmul peak (2048x2048, this run): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s"
    )
    head = f"{'setup':<18}{'steps':>6}{'tokens/s':>10}{'tok/CPU-s':>11}{'pad':>7}{'GFLOP/s':>9}{'of peak':>9}"
    print(head + "\n" + "-" * len(head))
    for runner in runners:
        pad = 1 - runner.tokens / max(runner.positions, 1)
        cpu_tps = runner.tokens / max(runner.cpu_seconds, 1e-9)
        line = f"{runner.name:<18}{runner.steps:>6}{runner.tps:>10.0f}{cpu_tps:>11.0f}{pad:>7.1%}"
        if hasattr(runner, "counts"):
            flops = 6 * runner.counts["non_embedding"] * runner.tokens
            flops += 6 * (H * H + H * V) * runner.masked  # the output layer's real work
            gflops = flops / runner.seconds / 1e9
            peak = peak16 if "bf16" in runner.name else peak32
            line += f"{gflops:>9.1f}{gflops / peak:>9.1%}"
        print(line)
    print(
        "(tokens/s: real tokens per wall-clock second; tok/CPU-s: per second of this process's "
        "CPU time;\n GFLOP/s: useful work, 6 x non-embedding params x tokens + the output layer "
        "at masked positions)"
    )
    base = runners[0]
    preset = autocast_context(cfg, torch.device("cpu"))[1]
    best = next(r for r in runners if r.name == f"zhtune {preset}")
    fp32 = runners[1]
    print(f"\nzhtune fp32 / baseline: {fp32.tps / base.tps:.2f}x")
    print(
        f"ratio zhtune ({preset}, the preset's precision) / HF baseline: {best.tps / base.tps:.2f}x"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
