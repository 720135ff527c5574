"""POST /generate and POST /generate_stream (TGI's shapes), served by continuous batching."""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import unless_disconnected
from app.entry import ModelEntry
from app.errors import InvalidInput, ServiceError, error_type
from app.generation import Generation, TokenEvent
from app.jobs import (
    Finished,
    Sampling,
    collect,
    encode_prompt,
    first_event,
    next_event,
    pause,
    prefill_logprobs,
    seeds,
    submit,
)
from app.registry import Registry
from app.schemas import (
    BestOfSequence,
    GenerateDetails,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    InputToken,
    Token,
)
from app.settings import Settings

router = APIRouter(tags=["inference"])

_STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}},
                     "description": "With `stream: true`: one `data:` event per token."}}


def _checked(params: GenerateParameters, settings: Settings) -> Sampling:
    """The request's sampling, within the limits."""
    if "max_new_tokens" not in params.model_fields_set:  # the default never exceeds the limit
        params.max_new_tokens = min(params.max_new_tokens, settings.max_new_tokens)
    if params.max_new_tokens > settings.max_new_tokens:
        raise InvalidInput(f"parameters.max_new_tokens is {params.max_new_tokens}; the limit is "
                           f"{settings.max_new_tokens} (RNN_MAX_NEW_TOKENS)")
    temperature, top_k, top_p, penalty = params.sampling()
    return Sampling(max_new_tokens=params.max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, repetition_penalty=penalty, typical_p=params.typical_p or 1.0,
                    frequency_penalty=params.frequency_penalty or 0.0, stop=params.stop,
                    top_n_tokens=params.top_n_tokens or 0)


def _start(body: GenerateRequest, registry: Registry, settings: Settings
           ) -> tuple[ModelEntry, list[int], list[Generation]]:
    sampling = _checked(body.parameters, settings)
    entry = registry.get(body.model, "generate")
    ids = encode_prompt(entry, body.inputs, settings, body.parameters.truncate)
    jobs: list[Generation] = []
    try:
        for seed in seeds(body.parameters.seed, body.parameters.best_of or 1):
            jobs.append(submit(entry, ids, sampling, seed))
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    return entry, ids, jobs


def _token(event: TokenEvent) -> Token:
    return Token(id=event.id, text=event.text, logprob=event.logprob)


def _top(event: TokenEvent) -> list[Token]:
    return [Token(id=i, text=t, logprob=lp) for i, t, lp in event.top_tokens or []]


def _details(done: Finished, prefill: list[InputToken], top_n: bool) -> dict[str, Any]:
    return {"finish_reason": done.finish_reason, "generated_tokens": len(done.events),
            "seed": done.job.seed, "input_length": len(done.job.prompt_ids), "prefill": prefill,
            "tokens": [_token(e) for e in done.events],
            "top_tokens": [_top(e) for e in done.events] if top_n else None}


async def _prefill(entry: ModelEntry, ids: list[int], wanted: bool) -> list[InputToken]:
    """The prompt's tokens with their logprobs, when asked for (`decoder_input_details`)."""
    if not wanted:
        return []
    logprobs = await prefill_logprobs(entry, ids)
    assert entry.artifact is not None
    return [InputToken(id=i, text=entry.artifact.tokenizer.id_to_token(i) or "", logprob=lp)
            for i, lp in zip(ids, logprobs, strict=True)]


async def _best(jobs: list[Generation], settings: Settings) -> tuple[Finished, list[Finished]]:
    """Every job's answer, and the best by total logprob (TGI's choice for best_of)."""
    finished = await asyncio.gather(*(collect(job, settings.request_timeout_s) for job in jobs))
    return max(finished, key=lambda f: f.logprob), finished


async def _answer(body: GenerateRequest, entry: ModelEntry, ids: list[int],
                  jobs: list[Generation], settings: Settings) -> GenerateResponse:
    """The whole answer."""
    params = body.parameters
    best, finished = await _best(jobs, settings)
    prefill = await _prefill(entry, ids, params.decoder_input_details)
    prefix = body.inputs if params.return_full_text else ""
    if not params.details:
        return GenerateResponse(generated_text=prefix + best.text)
    top_n = bool(params.top_n_tokens)
    others = [BestOfSequence(generated_text=prefix + f.text, **_details(f, prefill, top_n))
              for f in finished if f is not best]
    info = GenerateDetails(**_details(best, prefill, top_n),
                           best_of_sequences=others if len(jobs) > 1 else None)
    return GenerateResponse(generated_text=prefix + best.text, details=info)


@functools.cache
def _json_text(text: str) -> str:
    """A token's text as a JSON string (a language model's vocabulary is small: cached)."""
    return json.dumps(text)


def _number(value: float) -> str:
    """A float as json.dumps writes it (repr for finite values)."""
    return repr(value) if math.isfinite(value) else json.dumps(value)


def _event(event: TokenEvent, job: Generation, text: list[str], prefix: str = "",
           prefill: list[InputToken] | None = None) -> str:
    """One server-sent event in TGI's StreamResponse shape. Written by hand: this runs once
    per token per stream on the event loop, and json.dumps of the dict cost several times more."""
    top = ""
    if event.top_tokens is not None:
        top = ',"top_tokens":' + json.dumps(
            [{"id": i, "text": t, "logprob": lp, "special": False} for i, t, lp in event.top_tokens],
            separators=(",", ":"))
    head = (f'data: {{"index":{event.index},"token":{{"id":{event.id},'
            f'"text":{_json_text(event.text)},"logprob":{_number(event.logprob)},'
            f'"special":false}}{top},"generated_text":')
    if event.finish_reason is None:
        return head + 'null,"details":null}\n\n'
    details = {"finish_reason": event.finish_reason, "generated_tokens": len(text),
               "seed": job.seed, "input_length": len(job.prompt_ids)}
    if prefill:  # decoder_input_details on a stream: the prompt's tokens on the last event
        details["prefill"] = [t.model_dump() for t in prefill]
    return (head + f'{json.dumps(prefix + "".join(text))},"details":'
            f'{json.dumps(details, separators=(",", ":"))}}}\n\n')


async def _stream(job: Generation, first: TokenEvent, flush_s: float, prefix: str = "",
                  prefill: list[InputToken] | None = None) -> AsyncIterator[str]:
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
                chunk.append(_event(event, job, text, prefix, prefill))
                if event.finish_reason is not None:
                    yield "".join(chunk)
                    return
                event = _ready(job)
            yield "".join(chunk)
            if isinstance(event, BaseException):  # after the tokens that came before it
                raise event
            if flush_s:
                await pause(job, flush_s)
                event = _ready(job)
            if event is None:
                event = await next_event(job)
    except Exception as exc:  # tell the client in-band, as TGI does; leak nothing internal
        if isinstance(exc, ServiceError):
            error = {"error": str(exc), "error_type": error_type(exc)}
        else:
            error = {"error": "internal error", "error_type": "generation"}
        yield f"data: {json.dumps(error)}\n\n"
    finally:
        job.cancel()  # a client that left is dropped at the next step


def _ready(job: Generation) -> TokenEvent | BaseException | None:
    """The job's next event (or error) if it has already arrived, else None."""
    try:
        return job.events.get_nowait()
    except asyncio.QueueEmpty:
        return None


async def _respond(body: GenerateRequest, request: Request, response: Response,
                   stream: bool) -> Response | GenerateResponse:
    settings: Settings = request.app.state.settings
    entry, ids, jobs = _start(body, request.app.state.registry, settings)

    def cancel() -> None:
        for job in jobs:
            job.cancel()

    try:
        if not stream:
            response.headers["X-Model"] = entry.version
            return await unless_disconnected(
                request.receive, _answer(body, entry, ids, jobs, settings), cancel)
        prefill = await _prefill(entry, ids, body.parameters.decoder_input_details)
        job = jobs[0]
        if len(jobs) > 1:  # best_of: the best candidate is streamed once all have finished
            best, _ = await unless_disconnected(request.receive, _best(jobs, settings), cancel)
            job = best.job
            for event in best.events:
                job.put(event)
        first = await unless_disconnected(  # errors before the first token keep their status
            request.receive, first_event(job, settings.request_timeout_s), job.cancel)
    except BaseException:
        cancel()
        raise
    prefix = body.inputs if body.parameters.return_full_text else ""
    return StreamingResponse(_stream(job, first, settings.stream_flush_ms / 1000, prefix,
                                     prefill),
                             media_type="text/event-stream",
                             headers={"X-Model": entry.version, "Cache-Control": "no-cache"})


@router.post("/", response_model=list[GenerateResponse], responses=_STREAM_DOC,
             summary="TGI's root route: a one-element list, or /generate_stream with stream: true")
async def root(body: GenerateRequest, request: Request,
               response: Response) -> Response | list[GenerateResponse]:
    """As TGI's `POST /`: the answer in a one-element list; `stream: true` streams."""
    result = await _respond(body, request, response, body.stream)
    return result if isinstance(result, Response) else [result]


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
