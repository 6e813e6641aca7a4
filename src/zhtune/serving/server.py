"""``zhtune serve``: an HTTP API and a web page for one model (FastAPI + uvicorn).

Endpoints (see docs/serving.md): ``POST /v1/classify``, ``GET /health``, ``GET /metrics``
(Prometheus), ``GET /`` (web page), ``GET /docs`` + ``/openapi.json``; ``POST /`` (Hugging
Face Inference API) and ``POST /predict`` (TEI) in ``compat.py``; ``POST /v1/explain`` in
``explain_route.py``.

Every limit answers with its own status code and a JSON body
``{"error": {"status", "code", "message"}}``; bad input never gets a 5xx. The model is the
one named on the command line: no endpoint loads a model or reads a path from a request.
The server binds 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or
``ZHTUNE_API_KEY``) guards every endpoint but ``/health``. SIGTERM stops accepting
connections and finishes the requests in flight (uvicorn's graceful shutdown).
"""

import argparse
import asyncio
import logging
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from zhtune.errors import ZhtuneError
from zhtune.serving.batcher import Batcher, Metrics, QueueFull
from zhtune.serving.guard import PUBLIC_PATHS, Guard, error_body

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("zhtune")
ErrDoc = Callable[[str], dict[str, Any]]  # err(description) -> an OpenAPI response entry

NON_SPACE = re.compile(r"\S")
DOCS_STATIC = "/docs/static"  # Swagger UI and ReDoc assets (the fastapi-offline package)


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
    device: str = "auto"  # auto|cpu|cuda|cuda:N (zhtune.device)
    skip_verify: bool = False  # do not check the sha256 digests in zhtune.json
    read_timeout: float = 30.0  # seconds to wait for the next piece of a request body -> 408
    log_predictions: str | None = None  # JSONL of every answer (serving/monitor.py)
    log_text: str = "hash"  # hash | full | none
    log_max_bytes: int = 50_000_000  # rotate the log past this size
    log_backups: int = 5  # rotated files kept
    explain_max_units: int = 256  # POST /v1/explain: words (or characters) occlusion removes

    def check(self) -> None:
        """Raise :class:`ZhtuneError` for a limit out of range."""
        limits = ("max_batch", "max_texts", "max_chars", "max_body_bytes", "max_queue")
        for name in (*limits, "explain_max_units"):
            if getattr(self, name) < 1:
                raise ZhtuneError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_wait_ms < 0:
            raise ZhtuneError("--max-wait-ms must be >= 0")
        if not self.read_timeout > 0:
            raise ZhtuneError(f"--read-timeout must be > 0 seconds, got {self.read_timeout}")
        if not 0 <= self.port <= 65535:
            raise ZhtuneError(f"--port must be 0..65535, got {self.port}")


class ApiError(Exception):
    """An error the API answers with ``status`` and the JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.retry_after = retry_after


@dataclass
class AppState:
    """What the routes share: the model once loaded, its micro-batcher, a load error, and the
    uvicorn server (set by :func:`run_cli`; told to exit when the model cannot load)."""

    settings: ServeSettings
    metrics: Metrics
    clf: Any = None
    batcher: Batcher | None = None
    error: ZhtuneError | str | None = None
    server: Any = None
    predictions: Any = None  # monitor.PredictionLogger: label/confidence metrics, the log

    def activate(self, clf: Any) -> None:
        """Start the micro-batcher on ``clf``; from now on the app is healthy."""
        settings = self.settings
        batcher = Batcher(
            lambda texts: clf.predict_proba(texts, batch_size=settings.batch_size),
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000.0,
            max_pending=settings.max_queue,
            metrics=self.metrics,
        )
        batcher.start()
        self.batcher, self.clf = batcher, clf
        self.metrics.loaded.set(1)

    def load(self) -> None:
        """Load, warm up and activate the model named in the settings (a background thread)."""
        from zhtune.classifier import Classifier

        settings = self.settings
        try:
            kw: dict[str, Any] = {"int8": True} if settings.int8 else {}
            kw["device"] = settings.device
            if settings.allow_pickle:
                kw["allow_pickle"] = True
            clf = Classifier.load(
                settings.model,
                calibrated=settings.calibrated,
                skip_verify=settings.skip_verify,
                **kw,
            )
            clf.predict_proba(["预热"], batch_size=1)  # warm up before reporting healthy
            self.activate(clf)
            log.info(
                "model loaded: %s (%s; labels %s)", settings.model, clf.kind, ", ".join(clf.labels)
            )
        except Exception as e:  # reported by /health and run_cli
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, ZhtuneError) else e
            log.error("cannot load the model: %s", e)
            if self.server is not None:
                self.server.should_exit = True

    def model_name(self) -> str:
        """The model's name in responses: the last part of its path."""
        return Path(self.settings.model).name or self.settings.model


def create_app(settings: ServeSettings, classifier: Any = None) -> Guard:
    """The FastAPI app wrapped in :class:`Guard`. The model loads in a background thread at
    startup (``/health`` answers 503 until then) unless a loaded ``classifier`` is given."""
    from fastapi_offline import FastAPIOffline

    settings.check()
    state = AppState(settings, Metrics())
    from zhtune.serving.monitor import logger_for

    state.predictions = logger_for(settings, state.metrics.registry)
    err = _error_doc()
    common_errors: dict[int | str, dict[str, Any]] = {}
    if settings.api_key:
        common_errors[401] = err("missing or wrong API key")
    app = FastAPIOffline(  # /docs with Swagger UI from the package, not a CDN
        static_url=DOCS_STATIC,
        title="zhtune classifier",
        version="1",
        description="Chinese text classification. Limits and status codes: docs/serving.md.",
        lifespan=_lifespan(state, classifier),
        responses=common_errors,
    )
    _add_error_handlers(app)
    _add_classify_route(app, state, err)
    from zhtune.serving.compat import add_compat_routes  # imports this module

    add_compat_routes(app, state, err)
    from zhtune.serving.explain_route import add_explain_route  # imports this module

    add_explain_route(app, state, err)
    _add_health_metrics_routes(app, state)
    _add_page_route(app)
    if settings.api_key:
        _document_api_key(app)
    wrapped = Guard(app, settings, state.metrics)
    wrapped.state, wrapped.fastapi = state, app
    return wrapped


def _lifespan(state: AppState, classifier: Any) -> Callable[[Any], AbstractAsyncContextManager]:
    """Startup: activate ``classifier`` or start loading the model; shutdown: stop the batcher."""

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        if classifier is not None:
            state.activate(classifier)
        else:
            threading.Thread(target=state.load, name="zhtune-load", daemon=True).start()
        yield
        if state.batcher is not None:
            await asyncio.to_thread(state.batcher.stop)

    return lifespan


def _error_doc() -> ErrDoc:
    """``err(description)``: an OpenAPI response entry with the JSON error body as its schema
    (one ``ErrorBody`` model per app, so the document names it once)."""
    from pydantic import BaseModel

    class ErrorDetail(BaseModel):
        status: int
        code: str
        message: str
        details: Any = None

    class ErrorBody(BaseModel):
        error: ErrorDetail

    def err(desc: str) -> dict[str, Any]:
        return {"model": ErrorBody, "description": desc}

    return err


def _allowed_methods(app: "FastAPI", path: str) -> str:
    """Every method some route serves at ``path`` (the ``Allow`` header of a 405)."""
    methods = {
        m for r in app.routes if getattr(r, "path", None) == path for m in getattr(r, "methods", ())
    }
    return ", ".join(sorted(methods - {"HEAD"}))


def _add_error_handlers(app: "FastAPI") -> None:
    """Every error, FastAPI's own included, answers with the JSON error body."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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
        headers = dict(e.headers or {})
        if e.status_code == 405:  # GET / (page) and POST / (HF client) are two routes: list both
            headers["allow"] = _allowed_methods(app, _req.url.path) or headers.get("allow", "")
        return JSONResponse(
            error_body(e.status_code, code, str(e.detail)), e.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body(500, "internal_error", "internal server error"), 500)


def _add_classify_route(app: "FastAPI", state: AppState, err: ErrDoc) -> None:
    """``POST /v1/classify``: its request and response models, the limits, the batcher."""
    from pydantic import BaseModel, ConfigDict, Field

    settings = state.settings
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
        label: str | None = None  # single-label models
        confidence: float | None = None
        labels: list[str] | None = None  # multi-label models: the predicted label set
        probs: dict[str, float]
        truncated: bool

    class ClassifyResponse(BaseModel):
        model: str
        labels: list[str]
        results: list[Prediction]

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
        texts, cut = checked_texts(req.texts, req.truncate, settings)
        clf, probs = await run_batch(state, texts)
        results = [
            Prediction.model_validate({**p, "truncated": c})
            for p, c in zip(clf.format(probs), cut, strict=True)
        ]
        return ClassifyResponse(model=state.model_name(), labels=clf.labels, results=results)


async def run_batch(state: AppState, texts: list[str]) -> tuple[Any, Any]:
    """``(classifier, probabilities)`` for checked ``texts`` through the micro-batcher;
    :class:`ApiError` 503 while the model loads, 429 when the queue is full."""
    clf, batcher = ready(state)
    try:
        future = batcher.submit(texts)
    except QueueFull as e:
        raise ApiError(
            429, "queue_full", f"server busy ({e}); retry later", retry_after=1
        ) from None
    probs = await asyncio.wrap_future(future)
    state.predictions.record(texts, clf.labels, probs)  # --log-predictions, /metrics series
    return clf, probs


def ready(state: AppState) -> tuple[Any, Batcher]:
    """``(classifier, batcher)`` once the model is loaded; :class:`ApiError` 503 before."""
    clf, batcher = state.clf, state.batcher
    if batcher is None:
        raise ApiError(
            503, "loading", "the model is still loading; retry in a moment", retry_after=2
        )
    return clf, batcher


def checked_texts(
    given: list[str], truncate: bool, settings: ServeSettings, field: str = "texts"
) -> tuple[list[str], list[bool]]:
    """The texts to classify (cut to ``max_chars`` when ``truncate``) and which were cut;
    :class:`ApiError` (413 or 422) for too many, blank, invalid or too long texts."""
    if len(given) > settings.max_texts:
        raise ApiError(
            413,
            "too_many_texts",
            f"{len(given)} texts; at most {settings.max_texts} per request",
        )
    texts, cut = [], []
    for i, t in enumerate(given):
        name = field if field == "text" else f"{field}[{i}]"  # "text": one text, no index
        if not NON_SPACE.search(t):
            raise ApiError(422, "empty_text", f"{name} is empty or only whitespace")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                422, "invalid_text", f"{name} is not valid Unicode (lone surrogate)"
            ) from None
        if len(t) > settings.max_chars:
            if not truncate:
                raise ApiError(
                    422,
                    "text_too_long",
                    f"{name} has {len(t)} characters; the limit is "
                    f'{settings.max_chars} (or send "truncate": true)',
                )
            t = t[: settings.max_chars]
        texts.append(t)
        cut.append(len(t) < len(given[i]))
    return texts, cut


def _add_health_metrics_routes(app: "FastAPI", state: AppState) -> None:
    """``GET /health`` (200 once the model is loaded, 503 before) and ``GET /metrics``."""
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel

    class Health(BaseModel):
        status: str
        model: str | None = None
        kind: str | None = None
        labels: list[str] | None = None
        error: str | None = None

    @app.get(
        "/health",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: {"model": Health, "description": "the model is loading or failed"}},
        summary="200 once the model is loaded, 503 before",
    )
    async def health() -> Any:
        clf = state.clf
        if clf is None:
            status = "error" if state.error else "loading"
            body = Health(status=status, error=str(state.error) if state.error else None)
            return JSONResponse(body.model_dump(exclude_none=True), 503)
        return Health(status="ok", model=state.model_name(), kind=clf.kind, labels=clf.labels)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_page_route(app: "FastAPI") -> None:
    """``GET /``: the web page (``web/index.html``, read once)."""
    from fastapi.responses import HTMLResponse

    page = (resources.files("zhtune.serving") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get(
        "/",
        response_class=HTMLResponse,
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
        summary="Web page",
    )
    async def index() -> HTMLResponse:
        return HTMLResponse(page)


def _document_api_key(app: "FastAPI") -> None:
    """Declare the API key in the OpenAPI schema (the check itself is in :class:`Guard`)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
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

    app.openapi = openapi  # type: ignore[method-assign]  # the FastAPI way to customise it


# --- CLI -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``zhtune serve`` flags (defaults from :class:`ServeSettings`)."""
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
    from zhtune.classifier import add_load_args

    add_load_args(p)
    p.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout,
        help="drop a request whose body stalls this long between pieces with 408 (s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="inference threads (default: the cores other processes leave free)",
    )
    from zhtune.device import add_device_arg

    add_device_arg(p)
    p.add_argument("--access-log", action="store_true", help="log every request")
    from zhtune.serving.monitor import add_serve_arguments

    add_serve_arguments(p, d)
    from zhtune.serving import explain_route

    explain_route.add_arguments(p, d)
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, wait this long for requests in flight (s)",
    )


def run_cli(ns: argparse.Namespace) -> int:
    """``zhtune serve``: serve until SIGTERM/SIGINT; a model that cannot load raises."""
    import uvicorn

    flags = {f.name: getattr(ns, f.name) for f in fields(ServeSettings)}  # one flag per field
    flags["api_key"] = ns.api_key or os.environ.get("ZHTUNE_API_KEY") or None
    settings = ServeSettings(**flags)
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
        # a header block that arrives in pieces may be up to 256 KiB (10,000 short headers
        # pass whatever the TCP segmentation; a 1 MB header still gets 400)
        h11_max_incomplete_event_size=256 * 1024,
    )
    server = uvicorn.Server(config)
    state = app.state
    assert state is not None  # set by create_app
    state.server = server
    print(
        f"zhtune serve: http://{settings.host}:{settings.port}/ (loading {ns.model}; "
        f"/health turns 200 when ready)",
        file=sys.stderr,
    )
    server.run()
    error = state.error
    if error is not None:
        raise error if isinstance(error, ZhtuneError) else ZhtuneError(str(error))
    return 0
