"""POST /inside/memory, /inside/units and /explain: what a model holds at each step, which of
its units track a marked pattern, and why a classifier decided.

The work runs on the model's own inference thread, between its batches, so it never runs
beside them on the cores; at most INSIDE_MAX_PENDING such requests per model wait there (503
beyond), and one not answered within RNN_REQUEST_TIMEOUT_S gets a 504 (dropped if it had not
started)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel

from app.deps import unless_disconnected
from app.entry import ModelEntry
from app.errors import DeadlineExceeded, Overloaded
from app.inside import EXPLAIN_MAX_WORDS, explain, memory, units
from app.inside_schemas import (
    EXPLAIN_MAX_WORK,
    MEMORY_MAX_VALUES,
    ExplainRequest,
    ExplainResponse,
    MemoryRequest,
    MemoryResponse,
    UnitsRequest,
    UnitsResponse,
)
from app.limits import check_chars
from app.registry import Registry
from app.settings import Settings
from textrnn.artifact import Artifact

__all__ = ["INSIDE_MAX_PENDING", "install_inside", "router"]

INSIDE_MAX_PENDING = 4  # requests per model waiting for, or running on, its inference thread

router = APIRouter(tags=["inside"])
_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"description": "API key missing or wrong (when RNN_API_KEYS is set)"},
    404: {"description": "No such model; the message lists the available ones"},
    422: {"description": "Invalid input; the message names the field and the limit "
                         "(RNN_MAX_INPUT_CHARS, MEMORY_MAX_VALUES, EXPLAIN_MAX_WORK, ...)"},
    503: {"description": f"More than {INSIDE_MAX_PENDING} such requests wait on the model, or "
                         "it failed to load (see Retry-After)"},
    504: {"description": "Not started within RNN_REQUEST_TIMEOUT_S"},
}


@router.post("/inside/memory", response_model=MemoryResponse, responses=_ANSWERS, description=(
    "Each step's hidden state (and an LSTM's cell state, and the gates) of one layer, for all "
    f"or chosen units. Steps x units x series is at most {MEMORY_MAX_VALUES} (MEMORY_MAX_VALUES)."))
async def inside_memory(body: MemoryRequest, request: Request) -> Response:
    """Each step's recurrent values of one layer."""
    entry = _any_task(request.app.state.registry, body.model)
    return await _answer(request, entry, body.inputs, memory, body)


@router.post("/inside/units", response_model=UnitsResponse, responses=_ANSWERS, description=(
    "The units of a layer whose activation best tells the steps inside the marked spans from "
    "the others, ranked by AUC, with their values at every step (steps x top_k at most "
    f"{MEMORY_MAX_VALUES})."))
async def inside_units(body: UnitsRequest, request: Request) -> Response:
    """The units that best track the marked spans."""
    entry = _any_task(request.app.state.registry, body.model)
    return await _answer(request, entry, body.inputs, units, body)


@router.post("/explain", response_model=ExplainResponse, responses=_ANSWERS, description=(
    "A classifier's label scores and each word's contribution to one label's log-probability: "
    f"integrated gradients (steps x words at most {EXPLAIN_MAX_WORK}, EXPLAIN_MAX_WORK) or "
    f"occlusion (at most {EXPLAIN_MAX_WORDS} words, EXPLAIN_MAX_WORDS)."))
async def explain_classification(body: ExplainRequest, request: Request) -> Response:
    """Why a classifier decided, word by word."""
    entry = request.app.state.registry.get(body.model, "classify")
    return await _answer(request, entry, body.inputs, explain, body)


def _any_task(registry: Registry, name: str | None) -> ModelEntry:
    """The named model whatever its task (errors as for any route); by default, the default
    generation model."""
    entry = registry.entries.get(name) if name else None
    task_route = "classify" if entry is not None and entry.task == "classification" else "score"
    return registry.get(name, task_route)


async def _answer(request: Request, entry: ModelEntry, text: str,
                  work: Callable[[Artifact, Any], BaseModel], body: BaseModel) -> Response:
    """Run `work` on the model's inference thread, within the pending bound and the deadline,
    and answer its JSON (serialised there too: an answer may hold 200,000 numbers)."""
    state = request.app.state
    settings: Settings = state.settings
    check_chars(text, settings, "inputs")
    assert entry.artifact is not None and entry.executor is not None
    artifact = entry.artifact
    pending: Counter[str] = state.inside_pending
    if pending[entry.name] >= INSIDE_MAX_PENDING:
        raise Overloaded(f"model '{entry.name}' has {INSIDE_MAX_PENDING} requests to look "
                         "inside it waiting (INSIDE_MAX_PENDING); retry later")
    pending[entry.name] += 1
    try:
        job = asyncio.get_running_loop().run_in_executor(
            entry.executor, lambda: work(artifact, body).model_dump_json().encode())
        payload = await unless_disconnected(request.receive, _within(job, settings))
    finally:
        pending[entry.name] -= 1
    return Response(payload, media_type="application/json", headers={"X-Model": entry.version})


async def _within(job: asyncio.Future[bytes], settings: Settings) -> bytes:
    try:
        return await asyncio.wait_for(job, settings.request_timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(f"the model's inference thread did not finish this request "
                               f"within {settings.request_timeout_s} s (RNN_REQUEST_TIMEOUT_S)"
                               ) from None


def install_inside(app: FastAPI, settings: Settings) -> None:
    """Serve the routes, and write the text limit of these settings into their OpenAPI schemas
    (after `install_openapi`, whose document this completes)."""
    app.state.inside_pending = Counter()
    app.include_router(router)
    base = app.openapi

    def openapi() -> dict[str, Any]:
        spec = base()
        schemas = spec["components"]["schemas"]
        for name in ("MemoryRequest", "UnitsRequest", "ExplainRequest"):
            schemas[name]["properties"]["inputs"]["maxLength"] = settings.max_input_chars
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path in ("/inside/memory", "/inside/units", "/explain"):
            for code, answer in spec["paths"][path]["post"]["responses"].items():
                if code in {str(c) for c in _ANSWERS}:
                    answer["content"] = error
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
