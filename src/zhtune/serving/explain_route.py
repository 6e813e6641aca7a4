"""``POST /v1/explain``: the attributions of ``zhtune explain --json`` for one text.

``{"text": "…", "method": "auto|ig|occlusion", "label": null, "unit": "word|char",
"truncate": false}`` -> ``{"text", "label", "confidence", "method", "attributions": [{"text",
"start", "end", "score"}, ...], "predicted", ...}`` plus ``"truncated"``.

The same limits as ``/v1/classify``: one text of at most ``--max-chars`` characters (422, or
cut with ``truncate``), the body limit (413), the queue (429), 503 while loading. An
explanation runs on the micro-batcher's worker thread, alone between batches (captum hooks the
embedding layer; no other forward pass may run through it meanwhile), and counts toward
``--max-queue``. Occlusion runs one forward pass per unit, so a text with more than
``--explain-max-units`` words (characters with ``unit: "char"``) gets 422; integrated gradients
cost a fixed ``IG_STEPS`` passes whatever the length.
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures
import argparse
import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Literal

from zhtune.errors import ZhtuneError
from zhtune.serving.batcher import QueueFull
from zhtune.serving.server import ApiError, AppState, ErrDoc, checked_texts, ready

if TYPE_CHECKING:
    from fastapi import FastAPI

IG_STEPS = 50  # as `zhtune explain`; not chosen by the client


def add_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    """The ``zhtune serve`` flag of this route (default from ServeSettings ``d``)."""
    p.add_argument(
        "--explain-max-units",
        type=int,
        default=d.explain_max_units,
        help="POST /v1/explain: occlusion explains texts of at most this many words (422)",
    )


def _check(clf: Any, text: str, method: str, label: str | None, unit: str, limit: int) -> None:
    """422 for a label the model lacks, IG on a model without gradients, or an occlusion
    longer than the unit limit."""
    from zhtune.evaluation.explain import supports_ig, unit_spans

    if label is not None and label not in clf.labels:
        raise ApiError(
            422,
            "unknown_label",
            f"label {label!r} is not one of the model's labels: {', '.join(clf.labels)}",
        )
    ig = supports_ig(clf)
    if method == "ig" and not ig:
        raise ApiError(
            422,
            "unsupported_method",
            f'method "ig" needs a PyTorch encoder or LoRA-head model (this is a {clf.kind} '
            'model); use "occlusion"',
        )
    if method == "occlusion" or not ig:
        n = len(unit_spans(text, unit))
        if n > limit:
            raise ApiError(
                422,
                "too_long_to_explain",
                f"text has {n} {unit}s; occlusion explains at most {limit} (--explain-max-units)"
                + ('; send a shorter text or "method": "ig"' if ig else "; send a shorter text"),
            )


def add_explain_route(app: "FastAPI", state: AppState, err: ErrDoc) -> None:
    """``POST /v1/explain``: its request and response models, the limits, the worker."""
    from pydantic import BaseModel, ConfigDict, Field

    settings = state.settings
    Text = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": r"\S"})]

    def label_names(schema: dict) -> None:
        """The model's labels as the schema's enum (once loaded: /openapi.json is built on
        its first request, which clients make after /health says ok)."""
        if state.clf is not None:
            schema["enum"] = list(state.clf.labels)

    Label = Annotated[str, Field(json_schema_extra=label_names)]

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(
            strict=True,
            extra="forbid",
            json_schema_extra={"example": {"text": "质量很好，物流也快", "method": "auto"}},
        )
        text: Text = Field(
            description=f"one non-blank text of at most {settings.max_chars} characters "
            "(more: 422, unless truncate)"
        )
        method: Literal["auto", "ig", "occlusion"] = Field(
            "auto", description="integrated gradients where the model allows it (auto), or not"
        )
        label: Label | None = Field(
            None, description="explain this label (default: the predicted one)"
        )
        unit: Literal["word", "char"] = Field("word", description="jieba words or characters")
        truncate: bool = Field(
            False, description=f"cut a text over {settings.max_chars} characters instead of 422"
        )

    class Attribution(BaseModel):
        text: str
        start: int
        end: int
        score: float

    class ExplainResponse(BaseModel):
        text: str
        label: str
        confidence: float
        method: str
        attributions: list[Attribution]
        predicted: str
        truncated: bool
        logit: float | None = None  # integrated gradients: completeness check
        baseline_logit: float | None = None
        attribution_sum: float | None = None
        delta: float | None = None
        steps: int | None = None

    @app.post(
        "/v1/explain",
        response_model=ExplainResponse,
        response_model_exclude_none=True,
        responses={
            413: err("body over the byte limit"),
            422: err(
                "blank or too long text, unknown label, method not possible for this model, "
                "invalid JSON or wrong types"
            ),
            429: err("too many requests waiting; retry later"),
            503: err("the model is still loading"),
        },
        summary="Explain one text (word attributions)",
        description="The JSON of `zhtune explain --json`: a score per word toward the label; "
        "positive supports it. Occlusion: probability drop when the word is removed; IG: "
        "integrated gradients in logit units.",
    )
    async def explain_text(req: ExplainRequest) -> dict:
        from zhtune.evaluation.explain import explain

        texts, cut = checked_texts([req.text], req.truncate, settings, field="text")
        text = texts[0]
        clf, batcher = ready(state)
        _check(clf, text, req.method, req.label, req.unit, settings.explain_max_units)

        def run() -> dict:
            ex = explain(clf, text, req.method, req.label, req.unit, IG_STEPS)
            return ex.to_dict()

        try:
            future = batcher.submit_call(run)
        except QueueFull as e:
            raise ApiError(
                429, "queue_full", f"server busy ({e}); retry later", retry_after=1
            ) from None
        try:
            body = await asyncio.wrap_future(future)
        except ZhtuneError as e:
            raise ApiError(422, "cannot_explain", str(e)) from None
        return {**body, "truncated": cut[0]}
