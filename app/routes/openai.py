"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

The same models and the same scheduler as the TGI routes: a request with the same prompt,
temperature and seed gives the same text here as there. OpenAI's conventions differ in two
ways that are kept: the answer's text ends *before* a stop sequence, and sampling is the
default (temperature 1; 0 is greedy).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.chat import template_of
from app.deps import unless_disconnected
from app.entry import ModelEntry
from app.errors import InvalidInput, ServiceError, openai_error
from app.generation import Generation, TokenEvent
from app.jobs import Finished, Sampling, collect, encode_prompt, merge_events, prefill_logprobs, seeds, submit
from app.openai_schemas import ChatRequest, CompletionRequest
from app.registry import Registry
from app.settings import Settings

_OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": what, "content": {"application/json": {"schema": _OPENAI_ERROR}}}
    for status, what in ((400, "Invalid request; the message names the field"),
                         (401, "API key missing or wrong"), (404, "No such model"),
                         (413, "Body over RNN_MAX_BODY_BYTES"),
                         (503, "Queue full or shutting down"), (504, "Waited past its deadline"))}
_STREAMED: dict[int | str, dict[str, Any]] = {200: {
    "description": "JSON, or with `stream: true` server-sent events ending in `data: [DONE]`",
    "content": {"application/json": {}, "text/event-stream": {}}}}

router = APIRouter(prefix="/v1", tags=["openai"])

_FINISH = {"stop_sequence": "stop", "length": "length", "cancelled": "stop"}


def _entry(registry: Registry, name: str) -> ModelEntry:
    # "tgi" is what TGI's own OpenAI route takes for "the model served here".
    return registry.get(None if name == "tgi" else name, "generate")


def _sampling(body: CompletionRequest | ChatRequest, settings: Settings, default_tokens: int,
              stop: list[str], top_n: int) -> Sampling:
    wanted = body.max_tokens
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        wanted = body.max_completion_tokens
    tokens = min(default_tokens, settings.max_new_tokens) if wanted is None else wanted
    if tokens > settings.max_new_tokens:
        raise InvalidInput(f"max_tokens is {tokens}; the limit is {settings.max_new_tokens} "
                           "(RNN_MAX_NEW_TOKENS)")
    return Sampling(max_new_tokens=tokens,
                    temperature=1.0 if body.temperature is None else body.temperature,
                    top_p=body.top_p or 1.0, presence_penalty=body.presence_penalty or 0.0,
                    frequency_penalty=body.frequency_penalty or 0.0, stop=stop, top_n_tokens=top_n)


def _submit_all(entry: ModelEntry, prompts: list[list[int]], sampling: Sampling, seed: int | None,
                n: int) -> list[Generation]:
    jobs: list[Generation] = []
    try:
        for ids in prompts:
            jobs += [submit(entry, ids, sampling, s) for s in seeds(seed, n)]
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    return jobs


class _Trimmer:
    """Holds back streamed text that may be the start of a stop sequence, and drops the stop
    sequence that ends a choice (OpenAI's answers end before it)."""

    def __init__(self, stop: list[str]) -> None:
        self.stop, self.held = stop, ""

    def feed(self, event: TokenEvent) -> str:
        """The text that can go out now."""
        self.held += event.text
        if event.finish_reason is not None:
            out, self.held = _without_stop(self.held, self.stop, event.finish_reason), ""
            return out
        keep = max((k for s in self.stop for k in range(1, len(s))
                    if self.held.endswith(s[:k])), default=0)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(self.held) - keep:]
        return out


def _without_stop(text: str, stop: list[str], reason: str | None) -> str:
    if reason == "stop_sequence":
        for s in stop:
            if text.endswith(s):
                return text[:-len(s)]
    return text


def _usage(prompts: list[list[int]], done: list[int]) -> dict[str, int]:
    prompt = sum(len(p) for p in prompts)  # each prompt once, however many choices (OpenAI)
    return {"prompt_tokens": prompt, "completion_tokens": sum(done),
            "total_tokens": prompt + sum(done)}


def _stream(events: AsyncIterator[tuple[int, TokenEvent]], jobs: list[Generation],
            stop: list[str], chunk: Any, usage: Any) -> StreamingResponse:
    """Server-sent events: `chunk(index, text, event)` per piece of text, `usage(counts)` last
    when asked, then `data: [DONE]`."""

    async def body() -> AsyncIterator[str]:
        trimmers = [_Trimmer(stop) for _ in jobs]
        counts = [0] * len(jobs)
        try:
            async for i, event in events:
                counts[i] += 1
                text = trimmers[i].feed(event)
                if text or event.finish_reason is not None or event.index == 0:
                    yield f"data: {json.dumps(chunk(i, text, event))}\n\n"
            extra = usage(counts)
            if extra is not None:
                yield f"data: {json.dumps(extra)}\n\n"
            yield "data: [DONE]\n\n"
        except Exception as exc:  # in-band, as OpenAI does; nothing internal leaks
            message = str(exc) if isinstance(exc, ServiceError) else "internal error"
            yield f"data: {json.dumps(openai_error(500, message))}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _head(kind: str, entry: ModelEntry) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": entry.name, "system_fingerprint": entry.version}


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The generation models that serve, in OpenAI's list shape."""
    registry: Registry = request.app.state.registry
    data = [{"id": e.name, "object": "model", "created": 0, "owned_by": "textrnn"}
            for e in registry.ready() if e.task == "generation"]
    return {"object": "list", "data": data}


def _completion_logprobs(done: Finished, k: int, offset: int) -> dict[str, Any]:
    events = done.events
    texts = [e.text for e in events]
    offsets = [offset + sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    return {"tokens": texts, "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [{t: lp for _, t, lp in (e.top_tokens or [])[:k]} for e in events],
            "text_offset": offsets}


@router.post("/completions", response_model=None, responses=_STREAMED | _ERRORS)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """OpenAI's completions: each prompt continued `n` times."""
    settings: Settings = request.app.state.settings
    entry = _entry(request.app.state.registry, body.model)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts or len(texts) > settings.max_inputs:
        raise InvalidInput(f"prompt must hold 1 to {settings.max_inputs} texts (RNN_MAX_INPUTS)")
    prompts = [encode_prompt(entry, t, settings, field="prompt") for t in texts]
    k = body.logprobs
    sampling = _sampling(body, settings, 16, body.stops(), k or 0)
    jobs = _submit_all(entry, prompts, sampling, body.seed, body.n)
    head = _head("text_completion", entry)
    if body.stream:
        def chunk(i: int, text: str, event: TokenEvent) -> dict[str, Any]:
            prefix = texts[i // body.n] if body.echo and event.index == 0 else ""
            logprobs = None
            if k is not None:
                logprobs = {"tokens": [event.text], "token_logprobs": [event.logprob],
                            "top_logprobs": [{t: lp for _, t, lp in (event.top_tokens or [])[:k]}],
                            "text_offset": [event.index]}
            return head | {"choices": [{"text": prefix + text, "index": i, "logprobs": logprobs,
                                        "finish_reason": _FINISH.get(event.finish_reason or "")}]}

        def usage(counts: list[int]) -> dict[str, Any] | None:
            if body.stream_options is None or not body.stream_options.include_usage:
                return None
            return head | {"choices": [], "usage": _usage(prompts, counts)}
        return _stream(merge_events(jobs, settings.request_timeout_s), jobs, body.stops(),
                       chunk, usage)

    async def answer() -> dict[str, Any]:
        finished = await asyncio.gather(*(collect(j, settings.request_timeout_s) for j in jobs))
        choices = []
        for i, done in enumerate(finished):
            prompt = texts[i // body.n]
            text = _without_stop(done.text, body.stops(), done.finish_reason)
            logprobs = None
            if k is not None:
                logprobs = _completion_logprobs(done, k, len(prompt) if body.echo else 0)
                if body.echo:
                    ids = prompts[i // body.n]
                    lps = await prefill_logprobs(entry, ids)
                    assert entry.artifact is not None
                    toks = [entry.artifact.tokenizer.id_to_token(t) or "" for t in ids]
                    logprobs = {"tokens": toks + logprobs["tokens"],
                                "token_logprobs": lps + logprobs["token_logprobs"],
                                "top_logprobs": [None] * len(toks) + logprobs["top_logprobs"],
                                "text_offset": list(range(len(toks))) + logprobs["text_offset"]}
            choices.append({"text": (prompt if body.echo else "") + text, "index": i,
                            "logprobs": logprobs, "finish_reason": _FINISH[done.finish_reason]})
        return head | {"choices": choices,
                       "usage": _usage(prompts, [len(f.events) for f in finished])}

    def cancel() -> None:
        for job in jobs:
            job.cancel()
    return JSONResponse(await unless_disconnected(request.receive, answer(), cancel),
                        headers={"X-Model": entry.version})


def _chat_logprobs(event: TokenEvent, k: int) -> dict[str, Any]:
    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return item(event.text, event.logprob) | {
        "top_logprobs": [item(t, lp) for _, t, lp in (event.top_tokens or [])[:k]]}


@router.post("/chat/completions", response_model=None, responses=_STREAMED | _ERRORS)
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    """OpenAI's chat completions: the conversation rendered by the model's chat template,
    answered until the next turn would begin."""
    settings: Settings = request.app.state.settings
    entry = _entry(request.app.state.registry, body.model)
    assert entry.artifact is not None
    template = template_of(entry.artifact.config, entry.name)
    messages = [("system" if m.role == "developer" else m.role, m.name, m.text())
                for m in body.messages]
    prompt = template.render(messages)
    ids = encode_prompt(entry, prompt, settings, field="messages")
    stop = template.stop + [s for s in body.stops() if s not in template.stop]
    k = (body.top_logprobs or 0) if body.logprobs else 0
    sampling = _sampling(body, settings, 100, stop, k)
    jobs = _submit_all(entry, [ids], sampling, body.seed, body.n)
    head = _head("chat.completion.chunk" if body.stream else "chat.completion", entry)
    if body.stream:
        def chunk(i: int, text: str, event: TokenEvent) -> dict[str, Any]:
            delta: dict[str, Any] = {"content": text}
            if event.index == 0:
                delta["role"] = "assistant"
            logprobs = {"content": [_chat_logprobs(event, k)]} if body.logprobs else None
            return head | {"choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                        "finish_reason": _FINISH.get(event.finish_reason or "")}]}

        def usage(counts: list[int]) -> dict[str, Any] | None:
            if body.stream_options is None or not body.stream_options.include_usage:
                return None
            return head | {"choices": [], "usage": _usage([ids], counts)}
        return _stream(merge_events(jobs, settings.request_timeout_s), jobs, stop, chunk, usage)

    async def answer() -> dict[str, Any]:
        finished = await asyncio.gather(*(collect(j, settings.request_timeout_s) for j in jobs))
        choices = [{"index": i, "message": {"role": "assistant",
                                            "content": _without_stop(f.text, stop, f.finish_reason)},
                    "logprobs": {"content": [_chat_logprobs(e, k) for e in f.events]}
                    if body.logprobs else None,
                    "finish_reason": _FINISH[f.finish_reason]} for i, f in enumerate(finished)]
        return head | {"choices": choices,
                       "usage": _usage([ids], [len(f.events) for f in finished])}

    def cancel() -> None:
        for job in jobs:
            job.cancel()
    return JSONResponse(await unless_disconnected(request.receive, answer(), cancel),
                        headers={"X-Model": entry.version})
