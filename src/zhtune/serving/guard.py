"""The ASGI guard in front of the FastAPI app: API key, body-size limit, the body read
timeout (408), latency metrics per path, and the JSON error bodies every limit answers with."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import TYPE_CHECKING, Any

from zhtune.serving.batcher import Metrics

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from zhtune.serving.server import AppState, ServeSettings

KNOWN_PATHS = {
    "/", "/health", "/metrics", "/v1/classify", "/v1/explain", "/predict", "/docs",
    "/openapi.json",
}  # fmt: skip
PUBLIC_PATHS = {"/health"}


def error_body(status: int, code: str, message: str, details: Any = None) -> dict:
    """``{"error": {"status", "code", "message"[, "details"]}}``."""
    err: dict[str, Any] = {"status": status, "code": code, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


# --- the ASGI guard: metrics, API key, body size ---------------------------------------------
class Guard:
    """Outermost ASGI layer: counts every response, checks the API key and caps the body.

    The body is read here (up to ``max_body_bytes``) before the app sees it, so an oversized
    body gets 413 whatever its Content-Length says, and the app never buffers more.
    :func:`create_app` sets ``state`` (the :class:`AppState`) and ``fastapi`` (the inner app)."""

    state: AppState | None = None
    fastapi: FastAPI | None = None

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the response, then answer 401 or 413 here or pass the buffered body on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            denied = self._auth_error(scope)
            if denied is not None:
                await denied(scope, receive, send_wrapper)
                return
            body, problem = await self._read_body(scope, receive)
            if problem is not None:
                await problem(scope, receive, send_wrapper)
                return
            await self.app(scope, _replay(body, receive), send_wrapper)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(path, scope["method"], code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(code).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)

    def _auth_error(self, scope: Scope) -> JSONResponse | None:
        """None when the request may pass, else the 401 response to send."""
        key = self.settings.api_key
        if not key or scope["path"] in PUBLIC_PATHS:
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = value.strip()
        elif given is None and scheme.lower() == "basic":  # browsers: any user, key as password
            try:
                given = base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
            except ValueError:
                given = None
        if given is not None and secrets.compare_digest(given.encode(), key.encode()):
            return None
        browser_page = scope["path"] in ("/", "/docs")
        challenge = 'Basic realm="zhtune", charset="UTF-8"' if browser_page else "Bearer"
        return _json_response(
            401,
            "unauthorized",
            "a valid API key is required: header 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
            headers={"www-authenticate": challenge},
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, JSONResponse | None]:
        """The whole body and None, or ``b""`` and the response to send instead: 413 once the
        body is over ``max_body_bytes``, 408 when the client sends nothing for
        ``read_timeout`` seconds mid-body (the connection is then closed; the worker is free)."""
        limit = self.settings.max_body_bytes
        too_big = _json_response(
            413, "body_too_large", f"the request body is over {limit} bytes"
        )  # fmt: skip
        for k, v in scope["headers"]:
            if k.lower() == b"content-length":
                try:
                    if int(v) > limit:
                        return b"", too_big
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.settings.read_timeout)
            except TimeoutError:
                return b"", _json_response(
                    408,
                    "request_timeout",
                    f"the request body stalled for {self.settings.read_timeout:g} s "
                    "(--read-timeout); send it again",
                    headers={"connection": "close"},
                )
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then the real channel (for ``http.disconnect``)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body as a response (for the ASGI layer, outside FastAPI)."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


# --- the app -------------------------------------------------------------------------------
