"""POST /generate and POST /generate_stream (TGI's shapes), served by continuous batching."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from app.deps import tenant_of, unless_disconnected
from app.entry import ModelEntry
from app.generation.choices import Choices, Finished, Generation, TokenEvent
from app.jobs import encode_prompt, event_stream, open_choices, prefill_logprobs, sse_events
from app.schemas import (
    BestOfSequence,
    GenerateDetails,
    GenerateRequest,
    GenerateResponse,
    InputToken,
    Token,
)
from app.settings import Settings

router = APIRouter(tags=["inference"])

_STREAM_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}},
                     "description": "With `stream: true`: one `data:` event per token."}}


def _start(body: GenerateRequest, request: Request) -> tuple[ModelEntry, tuple[int, ...], Choices]:
    settings: Settings = request.app.state.settings
    params = body.parameters
    sampling = params.to_sampling(settings)
    entry = request.app.state.registry.get(body.model, "generate")
    ids = encode_prompt(entry, body.inputs, settings, params.truncate)
    choices = open_choices(entry, [ids], sampling, params.seed, params.best_of or 1, settings,
                           tenant_of(request), field="parameters.max_new_tokens")
    return entry, ids, choices


def _token(event: TokenEvent) -> Token:
    return Token(id=event.id, text=event.text, logprob=event.logprob)


def _top(event: TokenEvent) -> list[Token]:
    return [Token(id=i, text=t, logprob=lp) for i, t, lp in event.top_tokens or []]


def _details(done: Finished, prefill: list[InputToken], top_n: bool) -> dict[str, Any]:
    return {"finish_reason": done.finish_reason, "generated_tokens": len(done.events),
            "seed": done.seed, "input_length": len(done.generation.spec.prompt_ids),
            "prefill": prefill, "tokens": [_token(e) for e in done.events],
            "top_tokens": [_top(e) for e in done.events] if top_n else None}


async def _prefill(entry: ModelEntry, ids: tuple[int, ...], wanted: bool) -> list[InputToken]:
    """The prompt's tokens with their logprobs, when asked for (`decoder_input_details`)."""
    if not wanted:
        return []
    logprobs = await prefill_logprobs(entry, ids)
    assert entry.artifact is not None
    return [InputToken(id=i, text=entry.artifact.tokenizer.id_to_token(i) or "", logprob=lp)
            for i, lp in zip(ids, logprobs, strict=True)]


def _best(finished: list[Finished]) -> Finished:
    """The answer with the highest total logprob (TGI's choice for best_of)."""
    return max(finished, key=lambda f: f.logprob)


async def _answer(body: GenerateRequest, entry: ModelEntry, ids: tuple[int, ...],
                  finished: list[Finished]) -> GenerateResponse:
    """The whole answer."""
    params = body.parameters
    best = _best(finished)
    prefill = await _prefill(entry, ids, params.decoder_input_details)
    prefix = body.inputs if params.return_full_text else ""
    if not params.details:
        return GenerateResponse(generated_text=prefix + best.text)
    top_n = bool(params.top_n_tokens)
    others = [BestOfSequence(generated_text=prefix + f.text, **_details(f, prefill, top_n))
              for f in finished if f is not best]
    info = GenerateDetails(**_details(best, prefill, top_n),
                           best_of_sequences=others if len(finished) > 1 else None)
    return GenerateResponse(generated_text=prefix + best.text, details=info)


@functools.cache
def _json_text(text: str) -> str:
    """A token's text as a JSON string (a language model's vocabulary is small: cached)."""
    return json.dumps(text)


def _number(value: float) -> str:
    """A float as json.dumps writes it (repr for finite values)."""
    return repr(value) if math.isfinite(value) else json.dumps(value)


class TgiFrames:
    """A TGI stream's text so far, and each batch of its events as one write (the service's
    routes and the benchmark's baseline server write their streams with it)."""

    def __init__(self, seed: int, input_length: int, prefix: str = "",
                 prefill: list[InputToken] | None = None) -> None:
        self.seed, self.input_length, self.prefix = seed, input_length, prefix
        self.prefill = prefill or []
        self.text: list[str] = []

    @classmethod
    def of(cls, member: Generation, prefix: str, prefill: list[InputToken]) -> TgiFrames:
        """The frames of one member of a request."""
        return cls(member.spec.seed, len(member.spec.prompt_ids), prefix, prefill)

    def __call__(self, batch: list[tuple[int, TokenEvent]]) -> str:
        return "".join(self.event(event) for _, event in batch)

    def event(self, event: TokenEvent | Any) -> str:
        """One server-sent event in TGI's StreamResponse shape. Written by hand: this runs
        once per token per stream on the event loop, where json.dumps of a dict costs several
        times more."""
        self.text.append(event.text)
        top = ""
        if event.top_tokens is not None:
            top = ',"top_tokens":' + json.dumps(
                [{"id": i, "text": t, "logprob": lp, "special": False}
                 for i, t, lp in event.top_tokens], separators=(",", ":"))
        head = (f'data: {{"index":{event.index},"token":{{"id":{event.id},'
                f'"text":{_json_text(event.text)},"logprob":{_number(event.logprob)},'
                f'"special":false}}{top},"generated_text":')
        if event.finish_reason is None:
            return head + 'null,"details":null}\n\n'
        details: dict[str, Any] = {"finish_reason": event.finish_reason,
                                   "generated_tokens": len(self.text), "seed": self.seed,
                                   "input_length": self.input_length}
        if self.prefill:  # decoder_input_details on a stream: the prompt's tokens at the end
            details["prefill"] = [t.model_dump() for t in self.prefill]
        return (head + f'{json.dumps(self.prefix + "".join(self.text))},"details":'
                f'{json.dumps(details, separators=(",", ":"))}}}\n\n')


async def _respond(body: GenerateRequest, request: Request, response: Response,
                   stream: bool) -> Response | GenerateResponse:
    settings: Settings = request.app.state.settings
    entry, ids, choices = _start(body, request)
    try:
        if not stream:
            finished = await unless_disconnected(request.receive, choices.finished(),
                                                 choices.close)
            response.headers["X-Model"] = entry.version
            return await _answer(body, entry, ids, finished)
        prefill = await _prefill(entry, ids, body.parameters.decoder_input_details)
        prefix = body.inputs if body.parameters.return_full_text else ""
        if len(choices.members) > 1:  # best_of: the best candidate, once all have finished
            best = _best(await unless_disconnected(request.receive, choices.finished(),
                                                   choices.close))
            frames = TgiFrames.of(best.generation, prefix, prefill)
            return event_stream(_replay(frames(list(enumerate(best.events)))),
                                {"X-Model": entry.version})
        # Errors before the first token (a deadline in the queue) keep their status.
        await unless_disconnected(request.receive, choices.first(), choices.close)
    except BaseException:
        choices.close()
        raise
    frames = TgiFrames.of(choices.members[0], prefix, prefill)
    return event_stream(sse_events(choices, settings.stream_flush_ms / 1000, frames, "hf"),
                        {"X-Model": entry.version})


async def _replay(text: str) -> AsyncIterator[str]:
    yield text


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
