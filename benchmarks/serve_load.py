"""Load test of `zhtune serve`: a concurrency sweep with throughput, latency percentiles and
errors by status code; above capacity the server must answer 429 at once, not hang.

    .venv/bin/python benchmarks/serve_load.py [--model DIR] [--concurrency 1,8,32,128]
        [--duration 10] [--max-queue 16] [--threads 1] [--json results.json]

Without --model a small random BERT classifier (2 layers, hidden 128, the packaged 21,128-entry
vocabulary) is built from a config, so only the speed columns mean anything. The server runs
as a subprocess (``python -m zhtune serve``) on a free 127.0.0.1 port; nothing else is
contacted. Each level runs ``--duration`` seconds of closed-loop clients: every client holds
one keep-alive connection and sends ``POST /v1/classify`` with one text (drawn, seeded, from
sentences of 5-120 characters) as soon as its previous answer arrives; after a 429 it waits
50 ms (a client that retried at once would only measure its own busy loop). A request that
takes over 30 s counts as a ``timeout`` (a hang).

``--max-queue`` (default 16) is passed to the server: more clients than that is above
capacity by construction, so the 32- and 128-client levels measure the 429 path. Latency
percentiles are over the 200 answers; the 429 columns are the latency of the refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "质量很好",
    "物流太慢了，等了一个星期",
    "非常满意，还会再买",
    "客服态度恶劣，问题一直没有解决，再也不会来了",
    "这本书写得真好，强烈推荐给喜欢历史的朋友们阅读，内容翔实，文笔流畅",
    "屏幕有坏点，申请退货被拒绝了，非常失望！",
    "味道不错，分量足，就是送餐慢了点",
    "酒店位置方便，房间干净，早餐种类很多，服务员也很热情，下次出差还住这里。"
    "唯一的缺点是隔音一般，晚上能听到走廊里的声音，不过总体来说性价比很高。",
]
BACKOFF_429 = 0.05
TIMEOUT = 30.0


def build_model(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from zhtune.runs import write_manifest
    from zhtune.text import load_tokenizer

    labels = ["negative", "positive"]
    tok = load_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=512,
        num_labels=2,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    write_manifest(out, "encoder", labels, max_length=128)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_queue: int, threads: int, log: Path):
    cmd = [sys.executable, "-m", "zhtune", "-q", "serve", "--model", str(model), "--port",
           str(port), "--max-queue", str(max_queue), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            status, _ = asyncio.run(request(port, "GET", "/health", b""))
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    body = await reader.readexactly(length) if length else b""
    return status, body


def http_request(method: str, path: str, body: bytes) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def request(port: int, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request(method, path, body))
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def client(port: int, seed: int, until: float, out: list) -> None:
    rng = random.Random(seed)
    conn = None
    while time.monotonic() < until:
        text = rng.choice(SENTENCES)
        body = json.dumps({"texts": [text]}, ensure_ascii=False).encode()
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            writer.write(http_request("POST", "/v1/classify", body))
            await writer.drain()
            status, _ = await asyncio.wait_for(read_response(reader), TIMEOUT)
        except TimeoutError:
            status = "timeout"
            conn = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            status = f"conn:{type(e).__name__}"
            conn = None
        out.append((status, time.perf_counter() - t0))
        if status == 429:
            await asyncio.sleep(BACKOFF_429)
    if conn is not None:
        conn[1].close()


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def level(port: int, n: int, duration: float) -> dict:
    results: list = []
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, 1000 * n + i, t0 + duration, results) for i in range(n)))
    wall = time.monotonic() - t0
    ok = [dt for s, dt in results if s == 200]
    r429 = [dt for s, dt in results if s == 429]
    codes: dict[str, int] = {}
    for s, _ in results:
        codes[str(s)] = codes.get(str(s), 0) + 1
    ms = lambda x: None if x is None else round(1000 * x, 1)  # noqa: E731
    return {
        "clients": n,
        "seconds": round(wall, 2),
        "requests": len(results),
        "ok_per_second": round(len(ok) / wall, 1),
        "p50_ms": ms(pct(ok, 50)),
        "p95_ms": ms(pct(ok, 95)),
        "p99_ms": ms(pct(ok, 99)),
        "max_ms": ms(max(ok)) if ok else None,
        "status_counts": codes,
        "429_p50_ms": ms(pct(r429, 50)),
        "429_p99_ms": ms(pct(r429, 99)),
        "load_average_before": round(load, 2),
    }


def table(rows: list[dict]) -> str:
    head = ("| clients | requests | 200/s | p50 ms | p95 ms | p99 ms | max ms | status counts "
            "| 429 p50 ms | 429 p99 ms | load avg |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["status_counts"].items()))
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['ok_per_second']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} | {codes} | {r['429_p50_ms'] or '-'} "
            f"| {r['429_p99_ms'] or '-'} | {r['load_average_before']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory to serve (default: a small random BERT)")
    ap.add_argument("--concurrency", default="1,8,32,128", help="client counts to sweep")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    ap.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue")
    ap.add_argument("--threads", type=int, default=1, help="the server's inference threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="zhtune-load-") as tmp:
        model = Path(args.model) if args.model else build_model(Path(tmp) / "model")
        port = free_port()
        proc = start_server(model, port, args.max_queue, args.threads, Path(tmp) / "server.log")
        rows = []
        try:
            for n in levels:
                rows.append(asyncio.run(level(port, n, args.duration)))
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\nzhtune serve, {model if args.model else 'small random BERT (2x128)'}, "
          f"--max-queue {args.max_queue} --threads {args.threads}, {args.duration:g} s per level, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
