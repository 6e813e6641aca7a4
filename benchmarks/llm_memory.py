"""Peak memory and step time of full fine-tuning vs LoRA vs QLoRA on a ~0.5B Qwen2 (CPU).

Not a test. A randomly initialised Qwen2 with the shape of Qwen2.5-0.5B (hidden 896, 24
layers, 14 heads, 2 KV heads, intermediate 4864; vocabulary 151,936, or e.g. ``--vocab
21128``, the Chinese BERT vocabulary of zhtune's tokenizer) trains a few causal-LM steps on
random token ids (batch ``--batch-size`` x ``--seq-len`` tokens) in three setups, each in
its own subprocess so that its peak resident memory is its own:

- ``full``: fp32 weights, every parameter trains (AdamW);
- ``lora``: fp32 frozen base + LoRA r=8 on q/k/v/o (zhtune's defaults, ``add_lora``);
- ``qlora``: 4-bit NF4 + double quantization base (bitsandbytes) + the same LoRA.

``--init random`` (default): each child builds its random model in memory, decoder layer by
decoder layer (QLoRA: each layer's linear weights are quantized to NF4 right away, as
``from_pretrained(quantization_config=...)`` does while loading). ``--init checkpoint``: the
model is saved once (bf16 safetensors) and each child loads it with zhtune's loader
(``zhtune.llm.models.load_base``); the safetensors file is memory-mapped while loading and
its pages count in the resident set until the load ends.

Every child first fixes glibc's mmap threshold at 128 KiB, as zhtune's loader does for QLoRA
on CPU (``zhtune.llm.models.limit_heap_fragmentation``), so all three setups run with the same
allocator settings; ``--malloc default`` keeps glibc's dynamic threshold, under which
bitsandbytes' per-call fp32 dequantization temporaries fragment the heap and QLoRA's peak
grows by up to ~1 GiB.

The parent reads each child's peak RSS (``ru_maxrss`` from ``os.wait4``), prints a table,
then the ratios LoRA / full and QLoRA / LoRA.

    .venv/bin/python benchmarks/llm_memory.py --steps 3 --batch-size 1 --seq-len 128 \
        --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = ("full", "lora", "qlora")


def qwen25_05b_config(vocab: int, layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
    )


def prepare(model_dir: Path, vocab: int, layers: int) -> None:
    """Child: build the random model and save it as bf16 safetensors (+ the tokenizer)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from zhtune.text import load_tokenizer

    torch.manual_seed(0)
    config = qwen25_05b_config(vocab, layers)
    config.dtype = torch.bfloat16
    with torch.device("meta"):  # no fp32 copy: materialise layer by layer in bf16
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"parameters": n}))


def random_model(vocab: int, layers: int, qlora: bool):
    """A random Qwen2ForCausalLM built layer by layer (4-bit NF4 linear layers if ``qlora``)."""
    import torch
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import (
        Qwen2DecoderLayer,
        Qwen2RMSNorm,
        Qwen2RotaryEmbedding,
    )

    torch.manual_seed(0)
    config = qwen25_05b_config(vocab, layers)
    with torch.device("meta"):  # the skeleton only; every tensor is made below
        model = Qwen2ForCausalLM(config)
    body = model.model
    body.embed_tokens = torch.nn.Embedding(vocab, config.hidden_size, config.pad_token_id)
    torch.nn.init.normal_(body.embed_tokens.weight, std=0.02)
    model.lm_head.weight = body.embed_tokens.weight  # tied, as in Qwen2.5-0.5B
    body.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    body.rotary_emb = Qwen2RotaryEmbedding(config=config)
    for i in range(layers):
        layer = Qwen2DecoderLayer(config, i)  # fp32, default PyTorch init
        if qlora:
            quantize_linears(layer)
        body.layers[i] = layer
    if qlora:
        model.is_loaded_in_4bit = True  # what peft looks for to pick its 4-bit LoRA layers
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, left
    return model


def quantize_linears(module) -> None:
    """Replace every nn.Linear inside ``module`` by a bitsandbytes NF4 Linear4bit."""
    import bitsandbytes as bnb
    import torch

    for parent in list(module.modules()):
        for name, lin in list(parent.named_children()):
            if type(lin) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, lin.bias is not None,
                                  compute_dtype=torch.float32, compress_statistics=True,
                                  quant_type="nf4", device="meta")  # fmt: skip
            q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False,
                                         compress_statistics=True, quant_type="nf4",
                                         module=q).to("cpu")  # fmt: skip
            if lin.bias is not None:
                q.bias = lin.bias
            setattr(parent, name, q)


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def train(setup: str, ns: argparse.Namespace, model_dir: Path | None) -> None:
    """Child: build or load, wrap, train; print one JSON line of measurements."""
    import resource

    import torch

    from zhtune.device import set_threads
    from zhtune.llm.models import add_lora, load_base, load_llm_tokenizer

    set_threads()
    if ns.malloc == "zhtune":  # what zhtune's LLM loader does on CPU, in every setup
        from zhtune.llm.models import limit_heap_fragmentation

        limit_heap_fragmentation()
    steps, batch, seq, ckpt = ns.steps, ns.batch_size, ns.seq_len, ns.gradient_checkpointing
    t0 = time.perf_counter()
    if model_dir is None:
        model = random_model(ns.vocab, ns.layers, qlora=setup == "qlora")
    else:
        tok = load_llm_tokenizer(str(model_dir))
        model = load_base(str(model_dir), "scoring", tok, qlora=setup == "qlora")
    if setup == "full":
        if ckpt:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    else:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        model = add_lora(model, "scoring", 8, 16, 0.05, targets, setup == "qlora", ckpt)
    load_seconds = time.perf_counter() - t0
    rss_loaded = rss_mib()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=g)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "setup": setup,
                "parameters": sum(p.numel() for p in model.parameters()),
                "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters())
                / 2**20,
                "trainable": sum(p.numel() for p in params),
                "load_seconds": load_seconds,
                "rss_after_load_mib": rss_loaded,
                "rss_after_steps_mib": rss_mib(),
                "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "step_seconds": times,
                "loss": float(loss),
            }
        )
    )


def run_child(argv: list[str]) -> tuple[dict, float]:
    """Run this script as a child; (its JSON line, its peak RSS in MiB from wait4)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:2]} failed with exit code {proc.returncode}")
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    return json.loads(line), usage.ru_maxrss / 1024  # KiB -> MiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=151936, help="151936 = Qwen2.5's vocabulary")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--gradient-checkpointing", action="store_true", help="in every setup")
    p.add_argument("--init", choices=("random", "checkpoint"), default="random")
    p.add_argument("--workdir", help="--init checkpoint: where the model is saved (default: temp)")
    p.add_argument(
        "--malloc",
        choices=("zhtune", "default"),
        default="zhtune",
        help="zhtune: glibc mmap threshold 128 KiB in every setup (zhtune.llm.models."
        "limit_heap_fragmentation); default: glibc's dynamic threshold",
    )
    p.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns._child:
        kind, model_dir = ns._child[0], (Path(ns._child[1]) if len(ns._child) > 1 else None)
        if kind == "prepare":
            prepare(model_dir, ns.vocab, ns.layers)
        else:
            train(kind, ns, model_dir)
        return

    work = Path(ns.workdir or tempfile.mkdtemp(prefix="zhtune-llm-memory-"))
    model_dir = work / "qwen2-0.5b-random"
    shared = ["--vocab", str(ns.vocab), "--layers", str(ns.layers), "--steps", str(ns.steps),
              "--batch-size", str(ns.batch_size), "--seq-len", str(ns.seq_len)]  # fmt: skip
    shared += ["--malloc", ns.malloc]
    if ns.gradient_checkpointing:
        shared.append("--gradient-checkpointing")
    try:
        where: list[str] = []
        if ns.init == "checkpoint":
            run_child(["--_child", "prepare", str(model_dir), *shared])
            where = [str(model_dir)]
        print(f"random Qwen2 (Qwen2.5-0.5B shape, vocab {ns.vocab}, {ns.layers} layers; init "
              f"{ns.init}); batch {ns.batch_size} x {ns.seq_len} tokens, {ns.steps} steps, "
              f"gradient checkpointing {'on' if ns.gradient_checkpointing else 'off'}",
              flush=True)  # fmt: skip
        rows = {}
        for setup in ns.setups.split(","):
            row, peak = run_child(["--_child", setup, *where, *shared])
            row["peak_rss_mib"] = peak
            rows[setup] = row
            print(f"  {setup}: weights {row['weights_mib']:,.0f} MiB, peak {peak:,.0f} MiB, "
                  f"median step {median(row['step_seconds']):.2f} s", flush=True)  # fmt: skip
        print()
        print(
            "| setup | trainable params | weights (MiB) | RSS after load (MiB) | peak RSS (MiB) "
            "| median step (s) |"
        )
        print("|---|---|---|---|---|---|")
        for setup, r in rows.items():
            print(f"| {setup} | {r['trainable']:,} | {r['weights_mib']:,.0f} | "
                  f"{r['rss_after_load_mib']:,.0f} | {r['peak_rss_mib']:,.0f} | "
                  f"{median(r['step_seconds']):.2f} |")  # fmt: skip
        print()
        peak = {k: v["peak_rss_mib"] for k, v in rows.items()}
        if "full" in peak and "lora" in peak:
            print(
                f"LoRA / full fine-tuning peak RSS: {peak['lora'] / peak['full']:.0%} (target <= 40%)"
            )
        if "lora" in peak and "qlora" in peak:
            print(f"QLoRA / LoRA peak RSS: {peak['qlora'] / peak['lora']:.0%} (target <= 40%)")
    finally:
        if not ns.workdir:
            shutil.rmtree(work, ignore_errors=True)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


if __name__ == "__main__":
    main()
