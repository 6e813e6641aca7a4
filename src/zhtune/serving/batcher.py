"""Micro-batching for the server: one worker thread runs the model on the texts of many
requests at once, and the Prometheus metrics the server exposes.

Requests put their texts in a queue and wait on a future. The worker takes the oldest
request, then keeps collecting requests until it holds ``max_batch`` texts or ``max_wait``
seconds have passed since it took the first, runs one ``predict_proba`` over all of them
(length-sorted, padded per batch, so each text's probabilities equal its probabilities when
sent alone) and hands every request its own rows. At most ``max_pending`` requests may wait
or run at once; one more is refused at once (HTTP 429) instead of queueing without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger("zhtune")

_STOP = object()


class QueueFull(Exception):
    """Too many requests waiting for the model."""


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: they only add noise here

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zhtune_http_requests",
            "HTTP requests by path, method and status code",
            ["path", "method", "code"],
            registry=r,
        )
        self.errors = Counter(
            "zhtune_http_errors", "HTTP responses with status >= 400, by code", ["code"], registry=r
        )
        self.latency = Histogram(
            "zhtune_http_request_duration_seconds",
            "request latency by path",
            ["path"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_texts = Histogram(
            "zhtune_batch_size_texts",
            "texts per model call (micro-batch size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.batch_requests = Histogram(
            "zhtune_batch_size_requests",
            "requests merged into one model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.inference = Histogram(
            "zhtune_inference_seconds",
            "model time per micro-batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.texts = Counter("zhtune_texts", "texts classified", registry=r)
        self.pending = Gauge("zhtune_pending_requests", "requests waiting or running", registry=r)
        self.rejected = Counter(
            "zhtune_rejected_queue_full", "requests refused because the queue was full", registry=r
        )
        self.loaded = Gauge("zhtune_model_loaded", "1 once the model is loaded", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Job:
    __slots__ = ("texts", "future", "call")

    def __init__(self, texts: list[str], call: Callable[[], Any] | None = None) -> None:
        self.texts = texts
        self.future: Future = Future()
        self.call = call  # run alone on the worker (an explanation), not merged into a batch


class Batcher:
    """A single worker thread that merges concurrent requests into model batches."""

    def __init__(
        self,
        predict_proba: Callable[[Sequence[str]], np.ndarray],
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_pending: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self.predict_proba = predict_proba
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.max_pending = max(1, max_pending)
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="zhtune-batcher", daemon=True)
        self._stopped = False
        self._carry: _Job | None = None  # a call job met while collecting a batch

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, texts: list[str]) -> Future:
        """Queue ``texts``; the future gets an array (len(texts), n_labels). Raises QueueFull."""
        return self._enqueue(_Job(texts))

    def submit_call(self, call: Callable[[], Any]) -> Future:
        """Queue ``call()`` to run alone on the worker thread, between micro-batches (so it
        never runs beside a forward pass: captum's hooks see only its own inputs); it counts
        toward ``max_pending`` like a request. The future gets its result. Raises QueueFull."""
        return self._enqueue(_Job([], call))

    def _enqueue(self, job: _Job) -> Future:
        with self._lock:
            if self._stopped:
                raise QueueFull("the server is shutting down")
            if self._pending >= self.max_pending:
                if self.metrics:
                    self.metrics.rejected.inc()
                raise QueueFull(f"{self._pending} requests are already waiting")
            self._pending += 1
            if self.metrics:
                self.metrics.pending.set(self._pending)
        job.future.add_done_callback(self._done)
        self._queue.put(job)
        return job.future

    def _done(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1
            if self.metrics:
                self.metrics.pending.set(self._pending)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued request, then end the worker."""
        with self._lock:
            self._stopped = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            if job.call is not None:  # runs on its own, after this batch
                self._carry = job
                break
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first, self._carry = self._carry or self._queue.get(), None
            if first is _STOP:
                break
            if first.call is not None:
                self._run_call(first)
                continue
            jobs, stop = self._collect(first)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            t0 = time.perf_counter()
            try:
                probs = self.predict_proba(texts)
            except Exception as e:  # a model failure answers every request of the batch
                log.exception("inference failed on a batch of %d texts", len(texts))
                for j in jobs:
                    j.future.set_exception(e)
                continue
            if self.metrics:
                self.metrics.inference.observe(time.perf_counter() - t0)
                self.metrics.batch_texts.observe(len(texts))
                self.metrics.batch_requests.observe(len(jobs))
                self.metrics.texts.inc(len(texts))
            start = 0
            for j in jobs:
                j.future.set_result(probs[start : start + len(j.texts)])
                start += len(j.texts)
        # drain anything left (requests that raced with stop)
        while True:
            try:
                job, self._carry = self._carry or self._queue.get_nowait(), None
            except queue.Empty:
                return
            if job is _STOP:
                continue
            if job.call is not None:
                self._run_call(job)
            elif job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(self.predict_proba(job.texts))
                except Exception as e:
                    job.future.set_exception(e)

    @staticmethod
    def _run_call(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            assert job.call is not None
            job.future.set_result(job.call())
        except Exception as e:  # the caller's error, answered to that request only
            job.future.set_exception(e)
