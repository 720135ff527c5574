"""TGI's service routes: GET /info, POST /tokenize and GET /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.limits import check_chars
from app.registry import Registry
from app.schemas import MAX_BEST_OF, MAX_STOPS, MAX_TOP_N_TOKENS, MODEL_NAME, Text
from app.settings import Settings

router = APIRouter(tags=["tgi"])


class TokenizeRequest(BaseModel):
    """TGI's /tokenize body (its `parameters` are accepted and do not change the tokens)."""

    model_config = ConfigDict(extra="forbid")

    inputs: Text = Field(..., examples=["ROMEO:"])
    model: str | None = Field(None, pattern=MODEL_NAME)
    parameters: dict[str, Any] | None = None


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """TGI's description of the server: the default generation model and the limits."""
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    name = registry.default_name("generation")
    entry = registry.entries.get(name) if name else None
    sha = entry.artifact.config.get("weights_sha256") if entry and entry.artifact else None
    chars = settings.max_input_chars  # a character model: one token per character
    return {
        "model_id": name, "model_sha": sha, "model_dtype": entry.artifact.weights
        if entry and entry.artifact else None,
        "model_device_type": str(registry.device.type), "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": settings.max_queue, "max_best_of": MAX_BEST_OF,
        "max_stop_sequences": MAX_STOPS, "max_input_tokens": chars,
        "max_total_tokens": chars + settings.max_new_tokens,
        "max_client_batch_size": settings.max_inputs,
        "max_batch_size": settings.max_active_sequences, "max_top_n_tokens": MAX_TOP_N_TOKENS,
        "validation_workers": 1, "router": "textrnn", "version": request.app.version,
        "sha": None, "docker_label": None,
    }


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> list[dict[str, Any]]:
    """The prompt's tokens as the generation model reads them, with character offsets."""
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    check_chars(body.inputs, settings, "inputs")
    entry = registry.get(body.model, "generate")
    assert entry.artifact is not None
    encoding = entry.artifact.tokenizer.encode(body.inputs, add_special_tokens=False)
    return [{"id": i, "text": body.inputs[start:stop], "start": start, "stop": stop}
            for i, (start, stop) in zip(encoding.ids, encoding.offsets, strict=True)]


@router.get("/health", response_class=Response, responses={
    200: {"description": "Serving (empty body)", "content": {}},
    503: {"description": "Not ready (empty body)", "content": {}}})
async def health(request: Request) -> Response:
    """TGI's health check: 200 once a model serves, 503 before that and while draining."""
    state = request.app.state
    ok = state.loaded and not state.draining and bool(state.registry.ready())
    return Response(status_code=200 if ok else 503)
