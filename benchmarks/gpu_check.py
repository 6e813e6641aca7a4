"""One GPU check of the paths users run (under 5 minutes on one GPU; tiny models, no downloads).

    python benchmarks/gpu_check.py [--out DIR]

Runs with ``--device cuda``: finetune (BERT-architecture stand-in with the config keys of
hfl/chinese-roberta-wwm-ext), lora head and scoring with and without QLoRA (a tiny Qwen2),
zero-shot, pretrain (MLM, a few steps), predict and serve. For each it asserts that the
parameters and inputs were on CUDA in the expected dtype (bf16 where supported, else fp16;
4-bit for QLoRA) and that CPU and GPU probabilities agree within ``TOL`` (bf16 weights: the
probabilities differ by rounding, not by method). It then records the peak GPU memory
(``torch.cuda.max_memory_allocated``) of a few training steps of full fine-tuning, LoRA and
QLoRA of the same Qwen2-shaped model (the real figure behind the CPU-RSS proxy of
``benchmarks/llm_memory.py``) and prints one table. Without CUDA it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TOL = 2e-2  # max |p_gpu - p_cpu|: bf16 inference against fp32
POS = ["质量很好，物流也快", "非常满意，还会再买", "东西不错，值得推荐", "包装精美，服务周到"]
NEG = ["质量太差了，退货", "完全不能用，失望", "物流很慢，包装破损", "客服态度恶劣"]
ROWS: list[tuple[str, str]] = []


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="work directory (default: a temporary one)")
    ns = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing was run (needs one NVIDIA GPU)")
        return 2
    root = Path(ns.out or tempfile.mkdtemp(prefix="zhtune-gpu-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "train.csv"
    with data.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for k in range(6):
            w.writerows([(t + "！" * k, "positive") for t in POS])
            w.writerows([(t + "。" * k, "negative") for t in NEG])
    t0 = time.perf_counter()
    encoder_checks(root, data)
    llm_checks(root, data)
    pretrain_check(root, data)
    memory_rows(root)
    print("\n| check | result | detail |\n|---|---|---|")
    for name, ok, detail in ROWS:
        print(f"| {name} | {'ok' if ok else 'FAIL'} | {detail} |")
    print(f"\n{torch.cuda.get_device_name(0)}; {time.perf_counter() - t0:.0f} s in all")
    return 0 if all(ok for _, ok, _ in ROWS) else 1


def record(name: str, ok: bool, detail: str) -> None:
    ROWS.append((name, bool(ok), detail))
    print(f"{name}: {'ok' if ok else 'FAIL'} ({detail})", flush=True)


def cli(*args: str) -> None:
    from zhtune.cli import main as zmain

    rc = zmain(list(args))
    if rc != 0:
        raise SystemExit(f"gpu_check: zhtune {args[0]} exited {rc}")


def expected_dtype():
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parity(name: str, run: Path, texts: list[str], extra: str = "") -> None:
    """Parameters on CUDA in the inference dtype; CPU vs GPU probabilities within TOL."""
    import numpy as np
    import torch

    from zhtune import Classifier

    gpu = Classifier.load(run, device="cuda")
    model = getattr(gpu.backend, "model", None)
    params = list(model.parameters()) if model is not None else []
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    seen: list[str] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: seen.extend(v.device.type for v in kw.values() if torch.is_tensor(v)),
        with_kwargs=True,
    )
    pg = gpu.predict_proba(texts)
    hook.remove()
    del gpu
    torch.cuda.empty_cache()
    pc = Classifier.load(run, device="cpu").predict_proba(texts)
    diff = float(np.abs(pg - pc).max())
    want = str(expected_dtype()).removeprefix("torch.")
    ok = on_cuda and seen and set(seen) == {"cuda"} and diff <= TOL
    ok = ok and (want in dtypes or "uint8" in dtypes)  # 4-bit weights are packed in uint8
    record(name, ok, f"params on cuda: {on_cuda}, dtypes {dtypes}, inputs {sorted(set(seen))}, "
           f"max |Δp| cpu/gpu {diff:.1e} (tol {TOL}){extra}")  # fmt: skip


def encoder_checks(root: Path, data: Path) -> None:
    """finetune, evaluate-style scoring, predict and serve on the BERT-architecture stand-in."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from zhtune.text import load_tokenizer

    base = root / "roberta-wwm-ext-standin"
    cfg = BertConfig(architectures=["BertForMaskedLM"], vocab_size=21128, hidden_size=64,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                     hidden_act="gelu", layer_norm_eps=1e-12)  # fmt: skip
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(base)
    load_tokenizer().save_pretrained(base)
    run = root / "finetune"
    cli("finetune", "--model", str(base), "--train", str(data), "--out", str(run),
        "--max-steps", "20", "--batch-size", "16", "--eval-every", "10",
        "--progress", "false", "--report-to", "none")  # fmt: skip
    parity("finetune -> Classifier(cuda)", run, POS + NEG)
    cli("predict", "--model", str(run), "--text", "质量很好", "--device", "cuda")
    record("predict --device cuda", True, "exit 0")
    serve_check(run)


def serve_check(run: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "zhtune", "serve", "--model", str(run),
                             "--port", str(port), "--device", "cuda"])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            time.sleep(0.5)
        body = json.dumps({"texts": ["质量很好"]}).encode()
        req = urllib.request.Request(url + "/v1/classify", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.loads(r.read())
        record("serve --device cuda", bool(out.get("results")), f"{out.get('results')}")
    finally:
        proc.terminate()
        proc.wait(30)


def tiny_qwen(path: Path, hidden: int = 64, layers: int = 2) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zhtune.text import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id)  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def llm_checks(root: Path, data: Path) -> None:
    base = tiny_qwen(root / "qwen-tiny")
    fast = ["--max-steps", "10", "--batch-size", "8", "--eval-every", "10", "--max-length",
            "48", "--progress", "false", "--report-to", "none"]  # fmt: skip
    for mode in ("head", "scoring"):
        for qlora in (False, True):
            name = f"lora --mode {mode}{' --qlora' if qlora else ''}"
            run = root / f"lora-{mode}{'-q' if qlora else ''}"
            cli("lora", "--model", str(base), "--train", str(data), "--mode", mode,
                *(["--qlora"] if qlora else []), "--out", str(run), *fast)  # fmt: skip
            parity(name, run, POS + NEG)
    zs = root / "zero-shot"
    cli("zero-shot", "--model", str(base), "--test", str(data), "--out", str(zs),
        "--device", "cuda")  # fmt: skip
    parity("zero-shot --device cuda", zs, POS + NEG)


def pretrain_check(root: Path, data: Path) -> None:
    import torch

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join((POS + NEG) * 20) + "\n", encoding="utf-8")
    out = root / "pretrain"
    torch.cuda.reset_peak_memory_stats()
    cli("pretrain", "--objective", "mlm", "--text-files", str(corpus), "--out", str(out),
        "--hidden-size", "64", "--num-heads", "2", "--intermediate-size", "128",
        "--num-hidden-layers", "2", "--max-steps", "10", "--batch-size", "16",
        "--device", "cuda", "--cache-dir", "none")  # fmt: skip
    peak = torch.cuda.max_memory_allocated() / 2**20
    record(
        "pretrain --device cuda", peak > 0, f"peak GPU memory {peak:.0f} MiB (> 0: it ran there)"
    )


def memory_rows(root: Path) -> None:
    """Peak GPU memory of 5 training steps: full fine-tuning, LoRA, QLoRA, same model."""
    import torch

    from zhtune.llm.models import add_lora, load_base, load_llm_tokenizer

    base = tiny_qwen(root / "qwen-mem", hidden=512, layers=8)
    tok = load_llm_tokenizer(str(base))
    batch = tok(["质量很好，物流也快" * 8] * 8, return_tensors="pt", truncation=True,
                max_length=128, return_token_type_ids=False)  # fmt: skip
    batch = {k: v.cuda() for k, v in batch.items()}
    labels = torch.tensor([0, 1] * 4).cuda()
    peaks = {}
    for kind in ("full", "lora", "qlora"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        dtype = torch.float32 if kind == "full" else expected_dtype()
        model = load_base(str(base), "head", tok, ["a", "b"], qlora=kind == "qlora",
                          dtype=dtype, device=torch.device("cuda"))  # fmt: skip
        if kind != "full":
            model = add_lora(model, "head", 8, 16, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"],
                             qlora=kind == "qlora")  # fmt: skip
        model = model.cuda() if kind != "qlora" else model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(5):
            with torch.autocast("cuda", dtype=expected_dtype()):
                loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        peaks[kind] = torch.cuda.max_memory_allocated() / 2**20
        del model, opt
    ratio = peaks["qlora"] / peaks["lora"]
    for kind, mib in peaks.items():
        record(
            f"peak GPU memory, {kind}", True, f"{mib:.0f} MiB (hidden 512, 8 layers, batch 8x128)"
        )
    record("QLoRA / LoRA peak memory", True, f"{ratio:.0%} (target 40%; CPU-RSS proxy said 59%)")


if __name__ == "__main__":
    sys.exit(main())
