"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

The same models and the same scheduler as the TGI routes: a request with the same prompt,
temperature and seed gives the same text here as there. OpenAI's conventions differ in two
ways that are kept: the answer's text ends *before* a stop sequence, and sampling is the
default (temperature 1; 0 is greedy).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app.chat import template_of
from app.deps import tenant_of, unless_disconnected
from app.entry import ModelEntry
from app.errors import InvalidInput, ModelNotFound, WrongTask, printable
from app.generation.choices import Choices, Finished, TokenEvent
from app.generation.messages import Sampling
from app.jobs import encode_prompt, event_stream, open_choices, prefill_logprobs, sse_events
from app.limits import new_tokens
from app.openai_schemas import ChatRequest, CompletionRequest
from app.registry import Registry
from app.schemas import MODEL_NAME
from app.settings import Settings
from textrnn.stops import StopMatcher

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
log = logging.getLogger(__name__)

_FINISH = {"stop_sequence": "stop", "length": "length"}
_fallback_logged: set[str] = set()


def _entry(registry: Registry, name: str) -> ModelEntry:
    """The generation model a /v1 request names; a name that is not a served model (`tgi`,
    `dummy`, the name a client library fills in) is answered by the default generation model,
    as TGI does, and logged once per name."""
    entry = registry.entries.get(name)
    if entry is not None and entry.task == "generation":
        return registry.get(name, "generate")
    if entry is None:
        entry = registry.get(None, "generate")
        if name not in _fallback_logged and len(_fallback_logged) < 1024:
            _fallback_logged.add(name)
            log.info("model %r is not served; /v1 answers it with the default generation "
                     "model %s", printable(name[:128]), entry.name)
        return entry
    raise WrongTask(f"model '{name}' is a {entry.task} model; the generation models are: "
                    f"{_generators(registry)}", param="model")


def _generators(registry: Registry) -> str:
    return ", ".join(e.name for e in registry.ready() if e.task == "generation") or "none"


def _sampling(body: CompletionRequest | ChatRequest, settings: Settings, default_tokens: int,
              stop: tuple[str, ...], top_n: int) -> Sampling:
    """The one `Sampling` of an OpenAI request (temperature 1 by default; 0 is greedy)."""
    wanted, field = body.max_tokens, "max_tokens"
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        wanted, field = body.max_completion_tokens, "max_completion_tokens"
    return Sampling(max_new_tokens=new_tokens(settings, wanted, default_tokens, field),
                    temperature=1.0 if body.temperature is None else body.temperature,
                    top_p=body.top_p or 1.0, presence_penalty=body.presence_penalty or 0.0,
                    frequency_penalty=body.frequency_penalty or 0.0, stop=stop, top_n_tokens=top_n)


def _tokens_field(body: CompletionRequest | ChatRequest) -> str:
    if isinstance(body, ChatRequest) and body.max_completion_tokens is not None:
        return "max_completion_tokens"
    return "max_tokens"


class _Trimmer:
    """Holds back streamed text that may be the start of a stop sequence, and drops the stop
    sequence that ends a choice (OpenAI's answers end before it). The stop automaton makes
    each character cost the same however many and however long the stops are."""

    def __init__(self, stops: StopMatcher) -> None:
        self.stops, self.state, self.held = stops, 0, ""

    def feed(self, event: TokenEvent) -> str:
        """The text that can go out now."""
        text = self.held + event.text
        if event.finish_reason is not None:
            self.held = ""
            return _without_stop(text, self.stops.stops, event.finish_reason)
        self.state, _ = self.stops.feed(self.state, event.text)
        keep = self.stops.pending(self.state)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]


def _without_stop(text: str, stop: tuple[str, ...], reason: str | None) -> str:
    if reason == "stop_sequence":
        for s in stop:
            if text.endswith(s):
                return text[:-len(s)]
    return text


def _usage(prompts: list[tuple[int, ...]], done: list[int]) -> dict[str, int]:
    prompt = sum(len(p) for p in prompts)  # each prompt once, however many choices (OpenAI)
    return {"prompt_tokens": prompt, "completion_tokens": sum(done),
            "total_tokens": prompt + sum(done)}


def _stream(choices: Choices, settings: Settings, stop: tuple[str, ...],
            chunk: Callable[[int, str, TokenEvent], dict[str, Any]],
            usage: Callable[[list[int]], dict[str, Any] | None],
            entry: ModelEntry) -> Response:
    """Server-sent events: a `chunk(index, text, event)` per piece of text (each batch of
    tokens in one write), `usage(counts)` last when asked, then `data: [DONE]`."""
    matcher = StopMatcher(stop)
    trimmers = [_Trimmer(matcher) for _ in choices.members]
    counts = [0] * len(choices.members)

    def frame(batch: list[tuple[int, TokenEvent]]) -> str:
        out = []
        for i, event in batch:
            counts[i] += 1
            text = trimmers[i].feed(event)
            if text or event.finish_reason is not None or event.index == 0:
                out.append(f"data: {json.dumps(chunk(i, text, event))}\n\n")
        return "".join(out)

    def end() -> str:
        extra = usage(counts)
        return ("" if extra is None else f"data: {json.dumps(extra)}\n\n") + "data: [DONE]\n\n"

    return event_stream(sse_events(choices, settings.stream_flush_ms / 1000, frame, "openai", end),
                        {"X-Model": entry.version})


async def _first_or_whole(choices: Choices, request: Request, stream: bool) -> list[Finished]:
    """A stream's first token (an error before it keeps its status), or every answer."""
    try:
        if stream:
            await unless_disconnected(request.receive, choices.first(), choices.close)
            return []
        return await unless_disconnected(request.receive, choices.finished(), choices.close)
    except BaseException:
        choices.close()
        raise


def _head(kind: str, entry: ModelEntry) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": entry.name, "system_fingerprint": entry.version}


def _model_card(entry: ModelEntry) -> dict[str, Any]:
    created = entry.artifact.config.get("created_at") if entry.artifact else None
    return {"id": entry.name, "object": "model", "created": _epoch(created),
            "owned_by": "textrnn"}


def _epoch(stamp: Any) -> int:
    """A config's ISO 8601 `created_at` as Unix seconds (0 when absent or unreadable)."""
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp())
    except ValueError:
        return 0


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The generation models that serve, in OpenAI's list shape."""
    registry: Registry = request.app.state.registry
    return {"object": "list", "data": [_model_card(e) for e in registry.ready()
                                       if e.task == "generation"]}


@router.get("/models/{model_id}", responses=_ERRORS)
async def retrieve_model(request: Request,
                         model_id: str = Path(pattern=MODEL_NAME)) -> dict[str, Any]:
    """One generation model, in OpenAI's shape (`models.retrieve`)."""
    registry: Registry = request.app.state.registry
    entry = registry.entries.get(model_id)
    if entry is None or entry.task != "generation" or entry.status != "ready":
        raise ModelNotFound(f"model '{model_id}' is not served here; the generation models are: "
                            f"{_generators(registry)}",
                            param="model")
    return _model_card(entry)


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
        raise InvalidInput(f"prompt holds {len(texts)} texts; it takes 1 to {settings.max_inputs} "
                           "(RNN_MAX_INPUTS)", param="prompt")
    prompts = [encode_prompt(entry, t, settings, field="prompt" if len(texts) == 1 and
                             isinstance(body.prompt, str) else f"prompt[{i}]")
               for i, t in enumerate(texts)]
    k = body.logprobs
    stop = tuple(body.stops())
    sampling = _sampling(body, settings, 16, stop, k or 0)
    choices = open_choices(entry, prompts, sampling, body.seed, body.n, settings,
                           tenant_of(request), _tokens_field(body))
    head = _head("text_completion", entry)
    finished = await _first_or_whole(choices, request, body.stream)
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
        return _stream(choices, settings, stop, chunk, usage, entry)

    # The prompts' own logprobs (echo with logprobs): once per prompt, not once per choice.
    prompt_lps: dict[int, list[float | None]] = {}
    if body.echo and k is not None:
        for p in range(len(prompts)):
            prompt_lps[p] = await prefill_logprobs(entry, prompts[p])
    out = []
    for i, done in enumerate(finished):
        p = i // body.n
        text = _without_stop(done.text, stop, done.finish_reason)
        logprobs = None
        if k is not None:
            logprobs = _completion_logprobs(done, k, len(texts[p]) if body.echo else 0)
            if body.echo:
                assert entry.artifact is not None
                toks = [entry.artifact.tokenizer.id_to_token(t) or "" for t in prompts[p]]
                logprobs = {"tokens": toks + logprobs["tokens"],
                            "token_logprobs": prompt_lps[p] + logprobs["token_logprobs"],
                            "top_logprobs": [None] * len(toks) + logprobs["top_logprobs"],
                            "text_offset": list(range(len(toks))) + logprobs["text_offset"]}
        out.append({"text": (texts[p] if body.echo else "") + text, "index": i,
                    "logprobs": logprobs, "finish_reason": _FINISH[done.finish_reason]})
    return JSONResponse(head | {"choices": out,
                                "usage": _usage(prompts, [len(f.events) for f in finished])},
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
    ids = encode_prompt(entry, template.render(messages), settings, field="messages")
    stop = tuple(template.stop) + tuple(s for s in body.stops() if s not in template.stop)
    k = (body.top_logprobs or 0) if body.logprobs else 0
    sampling = _sampling(body, settings, 100, stop, k)
    choices = open_choices(entry, [ids], sampling, body.seed, body.n, settings,
                           tenant_of(request), _tokens_field(body))
    head = _head("chat.completion.chunk" if body.stream else "chat.completion", entry)
    finished = await _first_or_whole(choices, request, body.stream)
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
        return _stream(choices, settings, stop, chunk, usage, entry)

    out = [{"index": i, "message": {"role": "assistant",
                                    "content": _without_stop(f.text, stop, f.finish_reason)},
            "logprobs": {"content": [_chat_logprobs(e, k) for e in f.events]}
            if body.logprobs else None,
            "finish_reason": _FINISH[f.finish_reason]} for i, f in enumerate(finished)]
    return JSONResponse(head | {"choices": out,
                                "usage": _usage([ids], [len(f.events) for f in finished])},
                        headers={"X-Model": entry.version})
