"""The masked-position loss: one (M, V) logits tensor against the same loss in chunks.

    PYTHONPATH=src python benchmarks/masked_loss.py [--positions 600] [--chunk 128]
        [--precision fp32|bf16] [--rounds 5] [--threads 1]

The pretraining loop's sparse head (``predict_targets``) already projects only the M masked
positions onto the vocabulary, then ``F.cross_entropy`` on the (M, V) logits (fp32). The
lever measured here: the head + loss in chunks of C positions under activation
checkpointing, so that no (M, V) buffer exists at once (forward and backward). Baseline:
the loop's one-shot loss, same head (the shipped zh-roberta-tiny's), same positions, same
precision and threads. Prints the time per forward+backward of each, the size of the largest
logits buffer, the largest gradient difference, and the ratio chunked / one-shot last."""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def one_shot(head, hidden, target):
    return F.cross_entropy(head(hidden).float(), target, reduction="sum")


def chunked(head, hidden, target, size: int):
    def part(h, t):
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    return sum(
        checkpoint(part, hidden[i : i + size], target[i : i + size], use_reentrant=False)
        for i in range(0, len(hidden), size)
    )


def main() -> int:
    from transformers import AutoModelForMaskedLM

    from zhtune.pretrain.model import body_and_head
    from zhtune.runs import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positions", type=int, default=600, help="masked positions M per step")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForMaskedLM.from_pretrained(
        resolve_model("builtin:zh-roberta-tiny"), dtype=torch.float32
    )
    head = body_and_head(model)[1]
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(a.positions, model.config.hidden_size, generator=g)
    target = torch.randint(0, vocab, (a.positions,), generator=g)
    amp = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if a.precision == "bf16"
        else contextlib.nullcontext()
    )
    runs = {"one-shot": lambda h: one_shot(head, h, target),
            f"chunks of {a.chunk}": lambda h: chunked(head, h, target, a.chunk)}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    grads = {}
    for _ in range(a.rounds + 1):  # round 0 warms up
        for name, fn in runs.items():
            h = hidden.clone().requires_grad_(True)
            head.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with amp:
                loss = fn(h)
            loss.backward()
            times[name].append(time.perf_counter() - t)
            grads[name] = h.grad
    mb = lambda n: n * (2 if a.precision == "bf16" else 4) / 2**20  # noqa: E731
    print(f"M={a.positions} positions, V={vocab}, H={model.config.hidden_size}, "
          f"{a.precision}, {a.threads} thread(s), median of {a.rounds} rounds")  # fmt: skip
    med = {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in times.items()}
    sizes = {"one-shot": a.positions, f"chunks of {a.chunk}": min(a.chunk, a.positions)}
    for name in runs:
        print(f"  {name:14s} {med[name] * 1000:8.1f} ms   largest logits buffer "
              f"{mb(sizes[name] * vocab):6.1f} MiB (+ the fp32 copy for the loss)")  # fmt: skip
    a_, b_ = grads.values()
    print(f"  largest gradient difference: {float((a_ - b_).abs().max()):.2e}")
    names = list(runs)
    print(f"chunked / one-shot time: {med[names[1]] / med[names[0]]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
