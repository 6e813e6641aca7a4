"""``zhtune serve``: an HTTP API and a web page for one model (FastAPI + uvicorn).

Endpoints (see docs/serving.md): ``POST /v1/classify``, ``GET /health``, ``GET /metrics``
(Prometheus), ``GET /`` (web page), ``GET /docs`` + ``/openapi.json``.

Every limit answers with its own status code and a JSON body
``{"error": {"status", "code", "message"}}``; bad input never gets a 5xx. The model is the
one named on the command line: no endpoint loads a model or reads a path from a request.
The server binds 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or
``ZHTUNE_API_KEY``) guards every endpoint but ``/health``. SIGTERM stops accepting
connections and finishes the requests in flight (uvicorn's graceful shutdown).
"""

import argparse
import asyncio
import base64
import logging
import os
import re
import secrets
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from zhtune.errors import ZhtuneError
from zhtune.serving.batcher import Batcher, Metrics, QueueFull

log = logging.getLogger("zhtune")

NON_SPACE = re.compile(r"\S")
KNOWN_PATHS = {"/", "/health", "/metrics", "/v1/classify", "/docs", "/openapi.json"}
PUBLIC_PATHS = {"/health"}


@dataclass
class ServeSettings:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 32  # texts per micro-batch
    max_wait_ms: float = 5.0  # how long the worker waits for more requests
    max_texts: int = 64  # texts per request -> 413
    max_chars: int = 2000  # characters per text -> 422 unless truncate
    max_body_bytes: int = 1_048_576  # request body -> 413
    max_queue: int = 256  # requests waiting or running -> 429
    batch_size: int = 32  # texts per forward pass inside a micro-batch
    int8: bool = False
    calibrated: bool = False
    allow_pickle: bool = False  # trusted .bin weights (torch.load weights_only=True)

    def check(self) -> None:
        for name in ("max_batch", "max_texts", "max_chars", "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise ZhtuneError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_wait_ms < 0:
            raise ZhtuneError("--max-wait-ms must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ZhtuneError(f"--port must be 0..65535, got {self.port}")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: Any = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after = retry_after


def error_body(status: int, code: str, message: str, details: Any = None) -> dict:
    err: dict[str, Any] = {"status": status, "code": code, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


# --- the ASGI guard: metrics, API key, body size ---------------------------------------------
class Guard:
    """Outermost ASGI layer: counts every response, checks the API key and caps the body.

    The body is read here (up to ``max_body_bytes``) before the app sees it, so an oversized
    body gets 413 whatever its Content-Length says, and the app never buffers more."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            denied = self._auth_error(scope)
            if denied is not None:
                await denied(scope, receive, send_wrapper)
                return
            body, too_big = await self._read_body(scope, receive)
            if too_big:
                await _json_response(
                    413,
                    "body_too_large",
                    f"the request body is over {self.settings.max_body_bytes} bytes",
                )(scope, receive, send_wrapper)
                return
            await self.app(scope, _replay(body, receive), send_wrapper)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(path, scope["method"], code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(code).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)

    def _auth_error(self, scope):
        key = self.settings.api_key
        if not key or scope["path"] in PUBLIC_PATHS:
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = value.strip()
        elif (
            given is None and scheme.lower() == "basic"
        ):  # browsers: any user name, key as password
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

    async def _read_body(self, scope, receive) -> tuple[bytes, bool]:
        limit = self.settings.max_body_bytes
        for k, v in scope["headers"]:
            if k.lower() == b"content-length":
                try:
                    if int(v) > limit:
                        return b"", True
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


def _replay(body: bytes, receive):
    """The buffered body as one message, then the real channel (for ``http.disconnect``)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_response(status: int, code: str, message: str, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


# --- the app -------------------------------------------------------------------------------
def create_app(settings: ServeSettings, classifier=None):
    """The FastAPI app wrapped in :class:`Guard`. The model loads in a background thread at
    startup (``/health`` answers 503 until then) unless a loaded ``classifier`` is given."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings.check()
    metrics = Metrics()
    state: dict[str, Any] = {"clf": None, "batcher": None, "error": None, "server": None}

    def activate(clf) -> None:
        batcher = Batcher(
            lambda texts: clf.predict_proba(texts, batch_size=settings.batch_size),
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_queue,
            metrics=metrics,
        )
        batcher.start()
        state["batcher"], state["clf"] = batcher, clf
        metrics.loaded.set(1)

    def load() -> None:
        from zhtune.classifier import Classifier

        try:
            kw: dict[str, Any] = {"int8": True} if settings.int8 else {}
            if settings.allow_pickle:
                kw["allow_pickle"] = True
            clf = Classifier.load(settings.model, calibrated=settings.calibrated, **kw)
            clf.predict_proba(["预热"], batch_size=1)  # warm up before reporting healthy
            activate(clf)
            log.info(
                "model loaded: %s (%s; labels %s)", settings.model, clf.kind, ", ".join(clf.labels)
            )
        except Exception as e:  # reported by /health and run_cli
            state["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, ZhtuneError) else e
            log.error("cannot load the model: %s", e)
            if state["server"] is not None:
                state["server"].should_exit = True

    @asynccontextmanager
    async def lifespan(_app):
        if classifier is not None:
            activate(classifier)
        else:
            threading.Thread(target=load, name="zhtune-load", daemon=True).start()
        yield
        if state["batcher"] is not None:
            await asyncio.to_thread(state["batcher"].stop)

    class ErrorDetail(BaseModel):
        status: int
        code: str
        message: str
        details: Any = None

    class ErrorBody(BaseModel):
        error: ErrorDetail

    # not "maxLength": with truncate=true longer texts are valid (documented in the description)
    text_schema = {"pattern": r"\S"}
    Text = Annotated[str, Field(min_length=1, json_schema_extra=text_schema)]

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(
            strict=True,
            extra="forbid",
            json_schema_extra={
                "example": {"texts": ["质量很好，物流也快", "太失望了"], "truncate": False}
            },
        )
        texts: list[Text] = Field(
            min_length=1,
            description=f"1 to {settings.max_texts} non-blank texts (more: 413), each at most "
            f"{settings.max_chars} characters (more: 422, unless truncate)",
            json_schema_extra={"maxItems": settings.max_texts},
        )
        truncate: bool = Field(
            False, description=f"cut texts over {settings.max_chars} characters instead of 422"
        )

    class Prediction(BaseModel):
        label: str
        confidence: float
        probs: dict[str, float]
        truncated: bool

    class ClassifyResponse(BaseModel):
        model: str
        labels: list[str]
        results: list[Prediction]

    class Health(BaseModel):
        status: str
        model: str | None = None
        kind: str | None = None
        labels: list[str] | None = None
        error: str | None = None

    def err(desc: str) -> dict:
        return {"model": ErrorBody, "description": desc}

    common_errors: dict[int | str, dict] = {}
    if settings.api_key:
        common_errors[401] = err("missing or wrong API key")

    app = FastAPI(
        title="zhtune classifier",
        version="1",
        description="Chinese text classification. Limits and status codes: docs/serving.md.",
        lifespan=lifespan,
        responses=common_errors,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        headers = {"retry-after": str(e.retry_after)} if e.retry_after else None
        return JSONResponse(
            error_body(e.status, e.code, e.message, e.details), e.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(d.get("type") == "json_invalid" for d in errors):
            ctx = next(d.get("ctx") or {} for d in errors if d.get("type") == "json_invalid")
            msg = f"the body is not valid JSON ({ctx.get('error', 'parse error')})"
            return JSONResponse(error_body(422, "invalid_json", msg), 422)
        details = [
            {"loc": [str(x) for x in d.get("loc", ())], "msg": str(d.get("msg", ""))}
            for d in errors
        ][:20]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:]) or "body"
        return JSONResponse(
            error_body(422, "invalid_request", f"{where}: {first['msg']}", details), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8)
            msg = f"the body is not valid JSON ({e.detail})"
            return JSONResponse(error_body(422, "invalid_json", msg), 422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(
            error_body(e.status_code, code, str(e.detail)), e.status_code, headers=e.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body(500, "internal_error", "internal server error"), 500)

    def model_name() -> str:
        return Path(settings.model).name or settings.model

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses={
            413: err(f"more than {settings.max_texts} texts, or body over the byte limit"),
            422: err("empty list, blank text, text too long, invalid JSON or wrong types"),
            429: err("too many requests waiting; retry later"),
            503: err("the model is still loading"),
        },
        summary="Classify texts",
    )
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        if len(req.texts) > settings.max_texts:
            raise ApiError(
                413,
                "too_many_texts",
                f"{len(req.texts)} texts; at most {settings.max_texts} per request",
            )
        texts, cut = [], []
        for i, t in enumerate(req.texts):
            if not NON_SPACE.search(t):
                raise ApiError(422, "empty_text", f"texts[{i}] is empty or only whitespace")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    422, "invalid_text", f"texts[{i}] is not valid Unicode (lone surrogate)"
                ) from None
            if len(t) > settings.max_chars:
                if not req.truncate:
                    raise ApiError(
                        422,
                        "text_too_long",
                        f"texts[{i}] has {len(t)} characters; the limit is "
                        f'{settings.max_chars} (or send "truncate": true)',
                    )
                t = t[: settings.max_chars]
            texts.append(t)
            cut.append(len(t) < len(req.texts[i]))
        clf, batcher = state["clf"], state["batcher"]
        if batcher is None:
            raise ApiError(
                503, "loading", "the model is still loading; retry in a moment", retry_after=2
            )
        try:
            future = batcher.submit(texts)
        except QueueFull as e:
            raise ApiError(
                429, "queue_full", f"server busy ({e}); retry later", retry_after=1
            ) from None
        probs = await asyncio.wrap_future(future)
        results = [{**p, "truncated": c} for p, c in zip(clf.format(probs), cut, strict=True)]
        return ClassifyResponse(model=model_name(), labels=clf.labels, results=results)

    @app.get(
        "/health",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: {"model": Health, "description": "the model is loading or failed"}},
        summary="200 once the model is loaded, 503 before",
    )
    async def health() -> Any:
        clf = state["clf"]
        if clf is None:
            status = "error" if state["error"] else "loading"
            return JSONResponse(
                Health(
                    status=status, error=str(state["error"]) if state["error"] else None
                ).model_dump(exclude_none=True),
                503,
            )
        return Health(status="ok", model=model_name(), kind=clf.kind, labels=clf.labels)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    page = (resources.files("zhtune.serving") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get(
        "/",
        response_class=HTMLResponse,
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
        summary="Web page",
    )
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    if settings.api_key:
        _document_api_key(app)
    wrapped = Guard(app, settings, metrics)
    wrapped.state = state  # type: ignore[attr-defined]
    wrapped.fastapi = app  # type: ignore[attr-defined]
    return wrapped


def _document_api_key(app) -> None:
    """Declare the API key in the OpenAPI schema (the check itself is in :class:`Guard`)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        }
        for path, ops in schema["paths"].items():
            for op in ops.values():
                op["security"] = [] if path in PUBLIC_PATHS else [{"ApiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


# --- CLI -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeSettings(model="")
    p.add_argument("--model", required=True, help="run directory or model directory to serve")
    p.add_argument("--host", default=d.host, help="interface to bind (default: 127.0.0.1 only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port})")
    p.add_argument(
        "--api-key",
        help="require this key on every endpoint but /health (or set ZHTUNE_API_KEY, which "
        "keeps it out of the process list)",
    )
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="texts per micro-batch")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help="how long a micro-batch waits for more requests (ms)",
    )
    p.add_argument("--max-texts", type=int, default=d.max_texts, help="texts per request (413)")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="characters per text (422)")
    p.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="request body bytes (413)"
    )
    p.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="requests waiting or running (429)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="texts per forward pass")
    p.add_argument("--int8", action="store_true", help="PyTorch dynamic int8 (encoder models)")
    p.add_argument("--calibrated", action="store_true", help="apply the fitted temperature")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow a model whose weights are only .bin (pickle) files, if you trust them",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="inference threads (default: the cores other processes leave free)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, wait this long for requests in flight (s)",
    )


def run_cli(ns: argparse.Namespace) -> int:
    import uvicorn

    settings = ServeSettings(
        model=ns.model,
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key or os.environ.get("ZHTUNE_API_KEY") or None,
        max_batch=ns.max_batch,
        max_wait_ms=ns.max_wait_ms,
        max_texts=ns.max_texts,
        max_chars=ns.max_chars,
        max_body_bytes=ns.max_body_bytes,
        max_queue=ns.max_queue,
        batch_size=ns.batch_size,
        int8=ns.int8,
        calibrated=ns.calibrated,
        allow_pickle=ns.allow_pickle,
    )
    if ns.threads:
        os.environ["ZHTUNE_THREADS"] = str(ns.threads)
    local = Path(ns.model)
    if str(ns.model).startswith((".", "/")) and not local.exists():
        raise ZhtuneError(f"{ns.model}: no such model directory")
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(
            f"warning: listening on {settings.host} without an API key: anyone who can reach "
            "this port can use the model (set ZHTUNE_API_KEY)",
            file=sys.stderr,
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning" if getattr(ns, "quiet", False) else "info",
        access_log=ns.access_log,
        timeout_graceful_shutdown=ns.graceful_timeout,
        server_header=False,
    )
    server = uvicorn.Server(config)
    app.state["server"] = server  # type: ignore[attr-defined]
    print(
        f"zhtune serve: http://{settings.host}:{settings.port}/ (loading {ns.model}; "
        f"/health turns 200 when ready)",
        file=sys.stderr,
    )
    server.run()
    error = app.state["error"]  # type: ignore[attr-defined]
    if error is not None:
        raise error if isinstance(error, ZhtuneError) else ZhtuneError(str(error))
    return 0
