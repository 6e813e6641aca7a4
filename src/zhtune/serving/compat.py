"""Routes that answer the request shapes of clients people already have (docs/serving.md).

- ``POST /``: the Hugging Face Inference API text-classification task, as sent by
  ``huggingface_hub.InferenceClient(base_url=...).text_classification(text)``:
  ``{"inputs": str, "parameters": {"top_k", "function_to_apply"}}`` ->
  ``[[{"label", "score"}, ...]]`` (one list per input, best first).
- ``POST /predict``: Text Embeddings Inference (TEI) ``{"inputs": str | [str] | [[str]],
  "truncate", "raw_scores", "truncation_direction"}`` -> ``[{"label", "score"}, ...]`` for one
  string, ``[[...], ...]`` for a batch.

Both go through the same limits, micro-batcher and error bodies as ``/v1/classify``.
Scores are the model's probabilities; ``function_to_apply: "none"`` and ``raw_scores: true``
give log-probabilities (the logits up to a per-text constant: same order, same differences).
"""

# no ``from __future__ import annotations``: FastAPI reads the route signatures
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np

from zhtune.serving.server import ApiError, AppState, ErrDoc, checked_texts, run_batch

if TYPE_CHECKING:
    from fastapi import FastAPI


def ranked(labels: list[str], probs: np.ndarray, raw: bool, top_k: int | None) -> list[list[dict]]:
    """Per row, ``{"label", "score"}`` best first (``top_k`` of them); log-probs when ``raw``."""
    scores = np.log(np.clip(probs, 1e-45, None)) if raw else probs
    out = []
    for row, srow in zip(probs, scores, strict=True):
        order = np.argsort(-row, kind="stable")[: top_k or len(labels)]
        out.append([{"label": labels[i], "score": float(srow[i])} for i in order])
    return out


def add_compat_routes(app: "FastAPI", state: AppState, err: ErrDoc) -> None:
    """``POST /`` (Hugging Face Inference API) and ``POST /predict`` (TEI)."""
    _add_hf_route(app, state, err)
    _add_tei_route(app, state, err)


def _limits(err: ErrDoc) -> dict[int | str, dict[str, Any]]:
    return {
        413: err("more texts than --max-texts, or body over the byte limit"),
        422: err("blank or too long text, unsupported option, invalid JSON or wrong types"),
        429: err("too many requests waiting; retry later"),
        503: err("the model is still loading"),
    }


def _text_types(max_chars: int | None) -> Any:
    """A non-blank text in the schema (``pattern``, ``maxLength`` when not truncating)."""
    from pydantic import Field

    extra: dict[str, Any] = {"pattern": r"\S"}
    if max_chars:
        extra["maxLength"] = max_chars
    return Annotated[str, Field(min_length=1, json_schema_extra=extra)]


def _add_hf_route(app: "FastAPI", state: AppState, err: ErrDoc) -> None:
    from pydantic import BaseModel, ConfigDict, Field

    Text = _text_types(state.settings.max_chars)
    many = {"maxItems": state.settings.max_texts}
    Batch = Annotated[list[Text], Field(min_length=1, json_schema_extra=many)]  # type: ignore[valid-type]

    class HfParameters(BaseModel):
        model_config = ConfigDict(extra="forbid")
        top_k: int | None = Field(None, ge=1, description="only the k best labels")
        function_to_apply: Literal["softmax", "none"] | None = Field(
            None,
            description='"softmax" (default): probabilities; "none": log-probabilities '
            '("sigmoid" is for multi-label models: 422)',
        )

    class HfRequest(BaseModel):
        model_config = ConfigDict(
            json_schema_extra={"example": {"inputs": "质量很好，物流也快", "parameters": {}}}
        )
        inputs: Text | Batch = Field(description="a text, or a list of texts")  # type: ignore[valid-type]
        parameters: HfParameters | None = None

    class LabelScore(BaseModel):
        label: str
        score: float

    @app.post(
        "/",
        response_model=list[list[LabelScore]],
        responses=_limits(err),
        summary="Classify (Hugging Face Inference API shape)",
        description="The request `huggingface_hub.InferenceClient(base_url=URL)"
        ".text_classification(text)` sends; one list of labels per input, best first.",
    )
    async def hf_classify(req: HfRequest) -> list[list[dict]]:
        params = req.parameters or HfParameters(top_k=None, function_to_apply=None)
        given = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        texts, _ = checked_texts(given, False, state.settings, field="inputs")
        clf, probs = await run_batch(state, texts)
        return ranked(clf.labels, probs, params.function_to_apply == "none", params.top_k)


def _add_tei_route(app: "FastAPI", state: AppState, err: ErrDoc) -> None:
    from pydantic import BaseModel, ConfigDict, Field

    Text = _text_types(None)  # truncate=true makes longer texts valid
    One = Annotated[list[Text], Field(min_length=1, json_schema_extra={"maxItems": 1})]  # type: ignore[valid-type]
    many = {"maxItems": state.settings.max_texts}
    Batch = Annotated[list[Text | One], Field(min_length=1, json_schema_extra=many)]  # type: ignore[valid-type]

    class TeiRequest(BaseModel):
        model_config = ConfigDict(
            json_schema_extra={"example": {"inputs": "质量很好，物流也快", "raw_scores": False}}
        )
        inputs: Text | Batch = Field(  # type: ignore[valid-type]
            description='a text; a batch ["a", "b"] or [["a"], ["b"]] (sentence pairs: 422)'
        )
        truncate: bool | None = Field(False, description="cut texts over --max-chars")
        raw_scores: bool = Field(False, description="log-probabilities instead of probabilities")
        truncation_direction: Literal["right", "left", "Right", "Left"] = "right"

    class Prediction(BaseModel):
        label: str
        score: float

    @app.post(
        "/predict",
        response_model=list[Prediction] | list[list[Prediction]],
        responses=_limits(err),
        summary="Classify (Text Embeddings Inference shape)",
        description="One string: a list of labels, best first; a batch: one list per text.",
    )
    async def tei_predict(req: TeiRequest) -> list[dict] | list[list[dict]]:
        single = isinstance(req.inputs, str)
        given: list[str] = []
        for i, item in enumerate([req.inputs] if single else req.inputs):
            if isinstance(item, list):
                if len(item) != 1:
                    raise ApiError(
                        422,
                        "unsupported_input",
                        f"inputs[{i}]: sentence pairs are not supported (one text per item)",
                    )
                item = item[0]
            given.append(str(item))
        limit = state.settings.max_chars
        if req.truncate and req.truncation_direction.lower() == "left":
            given = [t[-limit:] for t in given]
        texts, _ = checked_texts(given, bool(req.truncate), state.settings, field="inputs")
        clf, probs = await run_batch(state, texts)
        rows = ranked(clf.labels, probs, req.raw_scores, None)
        return rows[0] if single else rows
