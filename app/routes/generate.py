"""POST /generate and POST /generate_stream (TGI's shapes), served by continuous batching."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import unless_disconnected
from app.entry import ModelEntry
from app.errors import DeadlineExceeded, InvalidInput, ServiceError
from app.generation import Generation, TokenEvent
from app.registry import Registry
from app.schemas import (
    GenerateDetails,
    GenerateRequest,
    GenerateResponse,
    Token,
)
from app.settings import Settings

router = APIRouter(tags=["inference"])

_STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}},
                     "description": "With `stream: true`: one `data:` event per token."}}


def _start(body: GenerateRequest, registry: Registry, settings: Settings
           ) -> tuple[ModelEntry, Generation]:
    params = body.parameters
    if len(body.inputs) > settings.max_input_chars:
        raise InvalidInput(f"inputs has {len(body.inputs)} characters; the limit is "
                           f"{settings.max_input_chars} (RNN_MAX_INPUT_CHARS)")
    if "max_new_tokens" not in params.model_fields_set:  # the default never exceeds the limit
        params.max_new_tokens = min(params.max_new_tokens, settings.max_new_tokens)
    if params.max_new_tokens > settings.max_new_tokens:
        raise InvalidInput(f"parameters.max_new_tokens is {params.max_new_tokens}; the limit is "
                           f"{settings.max_new_tokens} (RNN_MAX_NEW_TOKENS)")
    entry = registry.get(body.model, "generate")
    assert entry.generator is not None and entry.artifact is not None
    temperature, top_k, top_p, penalty = params.sampling()
    job = entry.generator.submit(
        entry.artifact.tokenizer.encode(body.inputs, add_special_tokens=False).ids,
        params.max_new_tokens, temperature, top_k, top_p, penalty,
        params.seed if params.seed is not None else default_seed(), params.stop)
    return entry, job


def default_seed() -> int:
    """A fresh random seed for a request that gave none."""
    return secrets.randbelow(2**53)


async def _next(job: Generation) -> TokenEvent:
    event = await job.events.get()
    if isinstance(event, BaseException):
        raise event
    return event


async def _first(job: Generation, timeout_s: float) -> TokenEvent:
    """The first token; 504 when the job is still waiting for a place at its deadline."""
    try:
        return await asyncio.wait_for(_next(job), timeout_s)
    except TimeoutError:
        if job.admitted:  # prefilled already: the token is moments away
            return await _next(job)
        job.cancel()
        raise DeadlineExceeded(f"request waited {timeout_s:g} s for a generation slot, its "
                               "deadline (RNN_REQUEST_TIMEOUT_S)") from None


def _token(event: TokenEvent) -> Token:
    return Token(id=event.id, text=event.text, logprob=event.logprob)


async def _collect(job: Generation, first: TokenEvent, details: bool) -> GenerateResponse:
    """The whole answer. The request wakes once, when its last token (or an error) has
    arrived, not once per token."""
    await _pause(job, None)
    tokens = [_token(first)]
    event = first
    while event.finish_reason is None:
        event = await _next(job)
        tokens.append(_token(event))
    info = GenerateDetails(finish_reason=event.finish_reason,
                           generated_tokens=len(tokens), seed=job.seed, tokens=tokens)
    return GenerateResponse(generated_text="".join(t.text for t in tokens),
                            details=info if details else None)


@functools.cache
def _json_text(text: str) -> str:
    """A token's text as a JSON string (a language model's vocabulary is small: cached)."""
    return json.dumps(text)


def _number(value: float) -> str:
    """A float as json.dumps writes it (repr for finite values)."""
    return repr(value) if math.isfinite(value) else json.dumps(value)


def _event(event: TokenEvent, job: Generation, text: list[str]) -> str:
    """One server-sent event in TGI's StreamResponse shape. Written by hand: this runs once
    per token per stream on the event loop, and json.dumps of the dict cost several times more."""
    head = (f'data: {{"index":{event.index},"token":{{"id":{event.id},'
            f'"text":{_json_text(event.text)},"logprob":{_number(event.logprob)},'
            f'"special":false}},"generated_text":')
    if event.finish_reason is None:
        return head + 'null,"details":null}\n\n'
    details = {"finish_reason": event.finish_reason, "generated_tokens": len(text),
               "seed": job.seed}
    return (head + f'{json.dumps("".join(text))},"details":'
            f'{json.dumps(details, separators=(",", ":"))}}}\n\n')


async def _stream(job: Generation, first: TokenEvent, flush_s: float) -> AsyncIterator[str]:
    """The job's events as SSE text. The first token goes out at once; after that a stream is
    written at most every `flush_s`, with every token that arrived meanwhile in one write. A
    write (waking the stream's task, Starlette's send chain, the socket call) costs the event
    loop several times what framing one more token costs, and the loop shares the machine's
    cores with the model: one write per token per stream spends CPU the model needs."""
    text: list[str] = []
    event: TokenEvent | BaseException | None = first
    try:
        while True:
            # The tokens already waiting go out in one write: when the event loop falls
            # behind the scheduler, a stream catches up with one send, not one per token.
            chunk: list[str] = []
            while isinstance(event, TokenEvent):
                text.append(event.text)
                chunk.append(_event(event, job, text))
                if event.finish_reason is not None:
                    yield "".join(chunk)
                    return
                event = _ready(job)
            yield "".join(chunk)
            if isinstance(event, BaseException):  # after the tokens that came before it
                raise event
            if flush_s:
                await _pause(job, flush_s)
                event = _ready(job)
            if event is None:
                event = await _next(job)
    except Exception as exc:  # tell the client in-band, as TGI does; leak nothing internal
        known = isinstance(exc, ServiceError)
        error = {"error": str(exc) if known else "internal error",
                 "error_type": type(exc).__name__ if known else "internal"}
        yield f"data: {json.dumps(error)}\n\n"
    finally:
        job.cancel()  # a client that left is dropped at the next step


async def _pause(job: Generation, seconds: float | None) -> None:
    """Wait `seconds` (None: no limit), or less if the job ends meanwhile: its last token is
    not held back."""
    if job.ended:
        return
    loop = asyncio.get_running_loop()
    job.waiter = waiter = loop.create_future()
    timer = None if seconds is None else loop.call_later(seconds, _wake, waiter)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        job.waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _ready(job: Generation) -> TokenEvent | BaseException | None:
    """The job's next event (or error) if it has already arrived, else None."""
    try:
        return job.events.get_nowait()
    except asyncio.QueueEmpty:
        return None


async def _respond(body: GenerateRequest, request: Request, response: Response,
                   stream: bool) -> Response | GenerateResponse:
    settings: Settings = request.app.state.settings
    entry, job = _start(body, request.app.state.registry, settings)
    try:
        first = await unless_disconnected(  # errors before the first token keep their status
            request.receive, _first(job, settings.request_timeout_s), job.cancel)
        if not stream:
            response.headers["X-Model"] = entry.version
            return await unless_disconnected(
                request.receive, _collect(job, first, body.parameters.details), job.cancel)
    except BaseException:
        job.cancel()
        raise
    return StreamingResponse(_stream(job, first, settings.stream_flush_ms / 1000),
                             media_type="text/event-stream",
                             headers={"X-Model": entry.version, "Cache-Control": "no-cache"})


@router.post("/", response_model=GenerateResponse, responses=_STREAM_DOC,
             summary="TGI's root route: /generate, or /generate_stream with stream: true")
@router.post("/generate", response_model=GenerateResponse, responses=_STREAM_DOC)
async def generate(body: GenerateRequest, request: Request,
                   response: Response) -> Response | GenerateResponse:
    """Continue the prompt; `stream: true` answers as /generate_stream does."""
    return await _respond(body, request, response, body.stream)


@router.post("/generate_stream", responses=_STREAM_DOC)
async def generate_stream(body: GenerateRequest, request: Request, response: Response) -> Response:
    """Continue the prompt, one server-sent event per token; the last carries the text."""
    result = await _respond(body, request, response, True)
    assert isinstance(result, Response)
    return result
