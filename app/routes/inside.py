"""POST /inside/memory, /inside/units and /explain: what a model holds at each step, which of
its units track a marked pattern, and why a classifier decided.

The work runs on the model's own inference thread, so it never runs beside the model's batches
on the cores, and in pieces of a few tens of milliseconds with the batches going between them,
so it never holds them up for long; at most INSIDE_MAX_PENDING such requests per model wait
(503 beyond). One not answered within RNN_REQUEST_TIMEOUT_S gets a 504, and its remaining
pieces are not run, nor are they when its client leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import torch
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
from textrnn.pieces import Pieces, step

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
                  work: Callable[[Artifact, Any], Pieces[BaseModel]], body: BaseModel) -> Response:
    """Run `work` piece by piece on the model's inference thread, within the pending bound
    and the deadline, and answer its JSON (serialised on another thread: an answer may hold
    200,000 numbers)."""
    settings: Settings = request.app.state.settings
    check_chars(text, settings, "inputs")
    assert entry.artifact is not None and entry.executor is not None
    if entry.looking_inside >= INSIDE_MAX_PENDING:
        raise Overloaded(f"model '{entry.name}' has {INSIDE_MAX_PENDING} requests to look "
                         "inside it waiting (INSIDE_MAX_PENDING); retry later")
    entry.looking_inside += 1  # a reload retires the entry after these too
    try:
        job = _in_pieces(work(entry.artifact, body), entry.executor)
        answer = await unless_disconnected(request.receive, _within(job, settings))
    finally:
        entry.looking_inside -= 1
    payload = await asyncio.to_thread(lambda: answer.model_dump_json().encode())
    return Response(payload, media_type="application/json", headers={"X-Model": entry.version})


async def _in_pieces(pieces: Pieces[BaseModel], executor: Executor) -> BaseModel:
    """Each piece as a task of its own on `executor`, so that work queued there meanwhile (the
    model's batches) runs between two pieces. Cancelled (deadline, client gone), the pieces
    not yet run never are."""
    loop = asyncio.get_running_loop()
    finished = False
    try:
        while True:
            finished, answer = await loop.run_in_executor(executor, _advance, pieces)
            if finished:
                assert answer is not None
                return answer
    finally:
        if not finished:  # after the piece that may be running: one at a time on the thread
            with contextlib.suppress(RuntimeError):  # the executor of a retired model
                executor.submit(pieces.close)


def _advance(pieces: Pieces[BaseModel]) -> tuple[bool, BaseModel | None]:
    """Run one piece in inference mode: (True, the answer) after the last."""
    with torch.inference_mode():
        return step(pieces)


async def _within(job: Awaitable[BaseModel], settings: Settings) -> BaseModel:
    try:
        return await asyncio.wait_for(job, settings.request_timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(f"the model's inference thread did not finish this request "
                               f"within {settings.request_timeout_s} s (RNN_REQUEST_TIMEOUT_S)"
                               ) from None


def install_inside(app: FastAPI, settings: Settings) -> None:
    """Serve the routes, and write the text limit of these settings into their OpenAPI schemas
    (after `install_openapi`, whose document this completes)."""
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
