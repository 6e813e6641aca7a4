"""Reliability: the HTTP server (docs/reliability.md, "Server").

``python -m zhtune serve`` in a subprocess on a free 127.0.0.1 port, driven with raw sockets:
a table of malformed requests (each gets its documented 4xx, never a 5xx), slow clients
(headers a byte at a time, a body that stalls half-way: 408 after ``--read-timeout``), abrupt disconnects (close or reset
mid-request, or before the answer), a full queue (fast 429s) and a burst of 200 requests from
32 clients. After each group the
server still answers everyone else, and its log has no traceback. All loops are bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from test_reliability_helpers import ENV_1THREAD, tiny_bert_classifier

OK_BODY = json.dumps({"texts": ["质量很好，物流也快"]}, ensure_ascii=False).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("w")
        cmd = [sys.executable, "-m", "zhtune", "serve", "--model", str(model),
               "--port", str(self.port), *args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **ENV_1THREAD}
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log_path.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, Server]]:
    """A default server and one with a tiny queue (for 429s) and a 2 s body read timeout
    (408s); they start together."""
    root = tmp_path_factory.mktemp("server")
    model = tiny_bert_classifier(root / "model")
    s = {
        "main": Server(
            model,
            root / "main.log",
            "--max-chars",
            "500",
            "--log-predictions",
            str(root / "predictions.jsonl"),
            "--log-text",
            "hash",
        ),
        "small": Server(
            model,
            root / "small.log",
            "--max-queue",
            "2",
            "--max-batch",
            "4",
            "--max-wait-ms",
            "20",
            "--read-timeout",
            "2",
        ),  # fmt: skip
    }
    try:
        for v in s.values():
            v.wait_ready()
        yield s
    finally:
        for v in s.values():
            v.stop()


def post(body: bytes, headers: dict | None = None, path: str = "/v1/classify") -> bytes:
    h = {"Host": "127.0.0.1", "Content-Type": "application/json", "Connection": "close",
         "Content-Length": str(len(body)), **(headers or {})}  # fmt: skip
    head = "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None)
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def exchange(port: int, data: bytes, timeout: float = 20) -> tuple[int | None, bytes]:
    """Send raw bytes, read until the server closes; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # the server may stop reading oversized input: then read what it answered
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    m = re.match(rb"HTTP/1\.1 (\d{3})", raw)
    return (int(m.group(1)) if m else None), raw.partition(b"\r\n\r\n")[2]


def healthy_and_serving(server: Server, bound: float = 5.0) -> float:
    """A normal classify request succeeds; returns its latency (s)."""
    t = time.perf_counter()
    r = httpx.post(server.url + "/v1/classify", json={"texts": ["好"]}, timeout=bound)
    dt = time.perf_counter() - t
    assert r.status_code == 200, r.text
    assert httpx.get(server.url + "/health", timeout=bound).status_code == 200
    return dt


def chunked(body: bytes, size: int = 65536) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def _nested(depth: int) -> bytes:
    return b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"


# name -> (raw request, allowed statuses, error code in the JSON body or None)
BAD_REQUESTS: dict[str, tuple[bytes, set[int], str | None]] = {
    "invalid JSON": (post(b'{"texts": ["a",'), {422}, "invalid_json"),
    "non-UTF-8 body": (post(b'{"texts": ["\xff\xfe"]}'), {422}, "invalid_json"),
    "texts not a list": (post(b'{"texts": "abc"}'), {422}, "invalid_request"),
    "a text not a string": (post(b'{"texts": [1]}'), {422}, "invalid_request"),
    "empty list": (post(b'{"texts": []}'), {422}, "invalid_request"),
    "blank text": (post(b'{"texts": ["  "]}'), {422}, None),
    "unknown field": (post(b'{"texts": ["a"], "model": "/etc/passwd"}'), {422}, "invalid_request"),
    "too many texts": (post(json.dumps({"texts": ["a"] * 65}).encode()), {413}, "too_many_texts"),
    "text too long": (post(json.dumps({"texts": ["好" * 501]}).encode()), {422}, "text_too_long"),
    "body over 1 MiB": (post(b'{"texts": ["' + b"a" * 1_100_000 + b'"]}'), {413}, "body_too_large"),
    "chunked body over 1 MiB": (
        post(
            chunked(b'{"texts": ["' + b"a" * 1_100_000 + b'"]}'),
            {"Content-Length": None, "Transfer-Encoding": "chunked"},
        ),  # fmt: skip
        {413},
        "body_too_large",
    ),
    "Content-Length says 10 GB": (post(OK_BODY, {"Content-Length": str(10**10)}), {413}, None),
    "lone surrogate": (post(b'{"texts": ["\\ud800"]}'), {422}, None),
    "NUL character in a text": (post(b'{"texts": ["\\u0000abc"]}'), {200}, None),
    "JSON nested 100k deep": (post(_nested(100_000)), {422}, None),
    "null body": (post(b"null"), {422}, None),
    "text/plain content type": (post(OK_BODY, {"Content-Type": "text/plain"}), {422}, None),
    "GET on /v1/classify": (
        b"GET /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        {405},
        "method_not_allowed",
    ),
    "unknown path": (post(OK_BODY, path="/v1/../../etc/passwd"), {404}, None),
    "not HTTP": (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",
        {400, None},
        None,
    ),
    "64 KB header (accepted)": (post(OK_BODY, {"X-Big": "a" * 65536}), {200}, None),
    "1 MB header": (post(OK_BODY, {"X-Big": "a" * 1_000_000}), {400, 431, None}, None),
    "10 MB header": (post(OK_BODY, {"X-Big": "a" * 10_000_000}), {400, 431, None}, None),
    "10,000 headers (accepted)": (
        post(OK_BODY, {f"X-H{i}": "v" for i in range(10_000)}),
        {200},
        None,
    ),
    "100,000 headers": (
        post(OK_BODY, {f"X-H{i}": "v" for i in range(100_000)}),
        {400, 431, None},
        None,
    ),  # fmt: skip
    "duplicate keys": (post(b'{"texts": ["a"], "texts": ["b", "c"]}'), {200}, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_4xx(servers, name) -> None:
    data, allowed, code = BAD_REQUESTS[name]
    status, body = exchange(servers["main"].port, data)
    assert status in allowed, (status, body[:300])
    if status is not None and status >= 400 and body.startswith(b"{"):
        err = json.loads(body)["error"]
        assert err["status"] == status
        if code:
            assert err["code"] == code, err


def test_server_is_fine_after_the_bad_requests(servers) -> None:
    """Runs after the table (same module): nothing above left the server broken."""
    for data, _, _ in BAD_REQUESTS.values():
        exchange(servers["main"].port, data)
    assert healthy_and_serving(servers["main"]) < 5
    log = servers["main"].log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    metrics = httpx.get(servers["main"].url + "/metrics", timeout=5).text
    # 503 is /health while the model loads; no other 5xx
    assert not re.search(r'zhtune_http_errors_total\{code="5(?!03)\d\d"\}', metrics), metrics


# --- slow clients ----------------------------------------------------------------------------
def _slow_headers(port: int, stop: threading.Event, interval: float) -> None:
    """Slowloris: the request line and headers one byte every ``interval`` seconds."""
    data = post(OK_BODY)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for b in data[: data.index(b"\r\n\r\n")]:
                if stop.wait(interval):
                    return
                s.send(bytes([b]))
    except OSError:
        return  # the server closed it: fine too


def _stalled_bodies(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send the headers and half the body, then nothing."""
    body = json.dumps({"texts": ["好" * 100]}).encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(post(body)[: -len(body) // 2])
        socks.append(s)
    return socks


def test_slow_clients_do_not_block_others(servers) -> None:
    srv = servers["main"]
    stop = threading.Event()
    slow = [threading.Thread(target=_slow_headers, args=(srv.port, stop, 0.2)) for _ in range(20)]
    for t in slow:
        t.start()
    stalled = _stalled_bodies(srv.port, 100)
    try:
        time.sleep(1.0)
        latencies = [healthy_and_serving(srv) for _ in range(20)]
        assert max(latencies) < 2.0, latencies
        # the stalled connections are still open: uvicorn has no body read timeout
        still_open = 0
        for s in stalled:
            s.setblocking(False)
            try:
                still_open += s.recv(1) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        print(f"slow clients: p100 latency {max(latencies):.3f}s; {still_open}/100 stalled "
              "connections still open after 1 s", file=sys.__stderr__)  # fmt: skip
    finally:
        stop.set()
        for t in slow:
            t.join(10)
        for s in stalled:
            s.close()
    assert healthy_and_serving(srv) < 2.0
    assert "Traceback" not in srv.log()


# --- abrupt disconnects ----------------------------------------------------------------------
def _close_mid_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(post(OK_BODY)[:-5])


def _reset_mid_body(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(post(OK_BODY)[:-5])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST instead of FIN


def _close_before_answer(port: int) -> None:
    body = json.dumps({"texts": ["质量很好，物流也快，非常满意" * 30] * 64}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(post(body))  # the model works on it; nobody reads the answer


def _close_mid_headers(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(post(OK_BODY)[:25])


def test_abrupt_disconnects_leave_the_server_serving(servers) -> None:
    srv = servers["main"]
    with ThreadPoolExecutor(16) as pool:
        jobs = [
            pool.submit(f, srv.port)
            for _ in range(25)
            for f in (_close_mid_body, _reset_mid_body, _close_before_answer, _close_mid_headers)
        ]
        for j in jobs:
            j.result(30)
    assert healthy_and_serving(srv) < 5
    deadline = time.monotonic() + 30  # the abandoned requests finish; nothing stays queued
    pending = None
    while time.monotonic() < deadline:
        text = httpx.get(srv.url + "/metrics", timeout=5).text
        pending = float(re.search(r"^zhtune_pending_requests (\S+)", text, re.M).group(1))
        if pending == 0:
            break
        time.sleep(0.2)
    assert pending == 0
    log = srv.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# --- above capacity: fast 429s ---------------------------------------------------------------
def test_full_queue_answers_429_fast_and_recovers(servers) -> None:
    srv = servers["small"]
    body = {"texts": ["质量很好，物流也快，非常满意，还会再买" * 5] * 64}

    # one pooled client: a new httpx client per request (SSL context, pool) costs the 48
    # threads more CPU under the GIL than the server spends refusing, which made this flaky
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=48))

    def one(_: int) -> tuple[int, float]:
        t = time.perf_counter()
        r = client.post(srv.url + "/v1/classify", json=body)
        return r.status_code, time.perf_counter() - t

    with client, ThreadPoolExecutor(48) as pool:
        results = list(pool.map(one, range(96)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= 2, codes
    fast = sorted(dt for c, dt in results if c == 429)
    slow = sorted(dt for c, dt in results if c == 200)
    med = lambda xs: xs[len(xs) // 2]  # noqa: E731
    print(f"429: {len(fast)} of {len(codes)}; median {med(fast):.3f}s, max {fast[-1]:.3f}s; "
          f"200: median {med(slow):.3f}s, max {slow[-1]:.3f}s", file=sys.__stderr__)  # fmt: skip
    # refused at once, not queued: the median refusal arrives before the queue has drained
    # (the last answered request), and never a hang. Not the median answered request: the
    # few that get in first are scored before the burst is even sent (flaky on 2 cores)
    assert med(fast) <= slow[-1] and fast[-1] < 10, (fast, slow)
    r = httpx.post(srv.url + "/v1/classify", json=body, timeout=60)
    assert r.status_code == 200 and r.headers.get("retry-after") is None


# --- a body that stalls: 408 after --read-timeout ---------------------------------------------
def test_stalled_body_gets_408_and_frees_the_worker(servers) -> None:
    srv = servers["small"]  # --read-timeout 2
    t0 = time.perf_counter()
    stalled = _stalled_bodies(srv.port, 8)
    try:
        assert healthy_and_serving(srv) < 2.0  # served while the 8 bodies stall
        answers = []
        for s in stalled:
            s.settimeout(15)
            raw = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):  # until the server closes the connection
                    raw += chunk
            answers.append((raw, time.perf_counter() - t0))
    finally:
        for s in stalled:
            s.close()
    for raw, _ in answers:
        assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
        body = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_timeout"
    waited = [dt for _, dt in answers]
    print(f"stalled bodies: 8/8 got 408 and were closed after {min(waited):.2f}-"
          f"{max(waited):.2f}s (--read-timeout 2)", file=sys.__stderr__)  # fmt: skip
    assert min(waited) > 1.5 and max(waited) < 12, waited
    assert healthy_and_serving(srv) < 2.0
    metrics = httpx.get(srv.url + "/metrics", timeout=10).text
    assert re.search(r'zhtune_http_errors_total\{code="408"\} ([0-9.]+)', metrics), metrics[-2000:]
    assert "Traceback" not in srv.log()


# --- a burst: 200 requests from 32 clients ----------------------------------------------------
def test_burst_of_200_requests_from_32_clients(servers) -> None:
    """No 5xx, every request answered, each with its own texts' predictions, and (the main
    server runs with --log-predictions) every logged line parses and no answer is missing."""
    import hashlib
    import json

    srv = servers["main"]
    texts = [
        f"第{i}条评论：质量很好，物流也快" if i % 2 else f"第{i}条：太差了" for i in range(200)
    ]

    def one(i: int) -> tuple[int, dict]:
        r = httpx.post(srv.url + "/v1/classify", json={"texts": [texts[i]]}, timeout=120)
        return r.status_code, r.json()

    t = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(200)))
    dt = time.perf_counter() - t
    codes = [c for c, _ in results]
    print(f"burst: 200 requests / 32 clients in {dt:.2f}s; statuses "
          f"{ {c: codes.count(c) for c in set(codes)} }", file=sys.__stderr__)  # fmt: skip
    assert all(c < 500 for c in codes), codes
    assert codes.count(200) == 200, codes  # the default queue (256) holds the whole burst
    alone = httpx.post(srv.url + "/v1/classify", json={"texts": texts[:8]}, timeout=60).json()
    for i in range(8):
        got = results[i][1]["results"][0]["probs"]
        assert got == pytest.approx(alone["results"][i]["probs"], abs=1e-5)
    assert "Traceback" not in srv.log()
    log = srv.log_path.parent / "predictions.jsonl"
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    logged = [r["text_sha256"] for r in records]
    for i, text in enumerate(texts):  # logged once per answer (the first 8 were sent twice)
        want = 2 if i < 8 else 1
        assert logged.count(hashlib.sha256(text.encode("utf-8")).hexdigest()) == want, text
