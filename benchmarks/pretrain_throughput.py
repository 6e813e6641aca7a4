"""MLM pretraining throughput: zhtune's training step against a plain Hugging Face baseline,
both in the same precision (``--precision fp32|bf16``).

Both run in this one process on the same config, the same corpus chunks and the same batch
size, interleaved in rounds so that a change in machine load hits both:

- baseline: ``RobertaForMaskedLM`` (vocabulary projection at every position), examples
  padded to ``max_seq_length`` (``padding="max_length"``), ``DataCollatorForLanguageModeling``
  (token masking), AdamW + gradient clipping; bf16: the forward under ``torch.autocast``;
- zhtune: ``zhtune.pretrain.loop.train_step`` (vocabulary projection only at the masked
  positions), whole-word masking, padding per batch, batches grouped by length; bf16: the
  same autocast.

Tokens/s counts real (non-padding) tokens, per wall-clock second and per CPU second of this
process. Useful GFLOP/s = (6 x non-embedding parameters x real tokens + 6 x (H*H + H*V) x
masked tokens) / s -- the same useful work for both setups -- set against a matmul peak
measured in this run in the same precision. The CPU's bf16 support (avx512_bf16 / amx_bf16
in /proc/cpuinfo) and the load average are printed; the ratio zhtune / baseline is last.

    .venv/bin/python benchmarks/pretrain_throughput.py --precision fp32 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
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
    compile_body,
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


def cpu_bf16_flags() -> str:
    """Which bf16 instructions the CPU advertises (Linux /proc/cpuinfo)."""
    try:
        flags = set(open("/proc/cpuinfo", encoding="utf-8").read().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(have) if have else "none (no avx512_bf16, no amx_bf16)"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def zhtune_runner(cfg, tok, train, precision: str, compiled: bool = False) -> Runner:
    """zhtune: sparse MLM head, whole-word masking, per-batch padding, length grouping
    (``compiled``: the body under torch.compile, widths padded to multiples of 32)."""
    zcfg = replace(cfg, precision=precision, compile=compiled)
    model = build_model(zcfg, tok).train()
    if compiled:
        compile_body(model, zcfg.objective)
    opt = make_optimizer(model, zcfg)
    autocast, _ = autocast_context(precision, torch.device("cpu"))
    collate = make_collator(zcfg, tok, seed=zcfg.seed)
    order = batch_order(train.lengths, cfg.batch_size, zcfg.seed, 0, zcfg.group_by_length)

    def step(batch: dict) -> float:
        return train_step(model, batch, opt, None, zcfg, autocast)

    batches = [lambda idx=idx: collate([train[i] for i in idx]) for idx in order]
    if compiled:  # compile every batch width before timing (one untimed step each)
        seen: set[tuple] = set()
        for make in batches[:400]:
            b = make()
            if tuple(b["input_ids"].shape) not in seen:
                seen.add(tuple(b["input_ids"].shape))
                step(b)
        print(f"compiled {len(seen)} batch shapes before timing: {sorted(seen)}")
    runner = Runner(f"zhtune {precision}" + (" compiled" if compiled else ""), step, batches)
    runner.counts = param_counts(model)
    return runner


def baseline_runner(cfg, tok, train, precision: str) -> Runner:
    """The plain Hugging Face recipe, in the same precision."""
    from transformers import DataCollatorForLanguageModeling, RobertaForMaskedLM

    B, L = cfg.batch_size, cfg.max_seq_length
    model = RobertaForMaskedLM(build_model(cfg, tok).config).train()  # same shape
    opt = make_optimizer(model, cfg)
    autocast, _ = autocast_context(precision, torch.device("cpu"))
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=cfg.mask_prob, seed=0)
    idx = np.random.default_rng(0).permutation(len(train))

    def example(i: int) -> dict:  # as tokenizer(..., padding="max_length") gives them
        return tok.pad({"input_ids": train[i][0].tolist()}, padding="max_length", max_length=L)

    def step(batch: dict) -> float:
        with autocast():
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
    runner = Runner(f"HF baseline {precision}", step, batches)
    runner.counts = param_counts(model)
    return runner


def report(runners: list[Runner], peak: float, H: int, V: int) -> None:
    """The table: steps, tokens per wall- and CPU-second, padding, useful GFLOP/s, of peak."""
    head = f"{'setup':<20}{'steps':>6}{'tokens/s':>10}{'tok/CPU-s':>11}{'pad':>7}{'GFLOP/s':>9}{'of peak':>9}"
    print(head + "\n" + "-" * len(head))
    for r in runners:
        pad = 1 - r.tokens / max(r.positions, 1)
        cpu_tps = r.tokens / max(r.cpu_seconds, 1e-9)
        flops = 6 * r.counts["non_embedding"] * r.tokens + 6 * (H * H + H * V) * r.masked
        gflops = flops / max(r.seconds, 1e-9) / 1e9
        print(f"{r.name:<20}{r.steps:>6}{r.tps:>10.0f}{cpu_tps:>11.0f}{pad:>7.1%}"
              f"{gflops:>9.1f}{gflops / peak:>9.1%}")  # fmt: skip
    print(
        "(tokens/s: real tokens per wall-clock second; tok/CPU-s: per second of this process's "
        "CPU time;\n GFLOP/s: useful work, 6 x non-embedding params x real tokens + the output "
        "layer at masked positions, the same for both setups)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pretrain-tiny.yaml", help="a PretrainConfig")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="both setups and the matmul peak run in this precision")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=60, help="timed seconds per setup")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per setup first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true",
                    help="also time zhtune with the body under torch.compile (a third row)")  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu bf16 instructions: {cpu_bf16_flags()}; {load()}")
    if args.precision == "bf16" and not bf16_supported(torch.device("cpu")):
        print("--precision bf16: this CPU/torch build has no fast bf16 matmul; use fp32")
        return 2
    cfg = load_config(PretrainConfig, args.config)
    tok = load_tokenizer(cfg.tokenizer_path)
    t0 = time.perf_counter()
    train, _, data = load_corpus(cfg, tok)
    print(f"corpus: {len(train)} chunks, {data['train_tokens']} tokens "
          f"(cache: {data['cache']}; {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(
        f"config: {args.config}: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, "
        f"heads {cfg.num_heads}, ffn {cfg.intermediate_size}, seq {cfg.max_seq_length}, "
        f"batch {cfg.batch_size}, dropout {cfg.dropout}; precision {args.precision}"
    )
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(dtype)
    runners = [baseline_runner(cfg, tok, train, args.precision),
               zhtune_runner(cfg, tok, train, args.precision)]  # fmt: skip
    if args.compile:
        runners.append(zhtune_runner(cfg, tok, train, args.precision, compiled=True))
    for r in range(args.rounds):
        for runner in runners:
            runner.run(args.seconds / args.rounds, warmup=args.warmup if r == 0 else 0)
    peak = max(matmul_peak(dtype), peak)  # before and after (a shared machine): best wins
    print(f"\nmatmul peak ({args.precision}, 2048x2048, this run): {peak:.0f} GFLOP/s; {load()}")
    report(runners, peak, cfg.hidden_size, len(tok))
    base, ours = runners[:2]
    if args.compile:
        print(f"compiled / eager zhtune: {runners[2].tps / ours.tps:.2f}x")
        ours = max(runners[1:], key=lambda r: r.tps)
    print(f"\nratio zhtune / HF baseline ({args.precision} both): {ours.tps / base.tps:.2f}x")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
