"""A generation request above the engine, whichever protocol sent it: its limits, its cost
and its `Choices`.

Each protocol's route turns its body into prompts and one `Sampling` with the helpers here, so
every limit is written once and named in its error, and then only formats what `Choices`
yields. Nothing here changes what a generation produces: a seeded request gives the same text
whichever route asked for it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import torch
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.entry import ModelEntry
from app.errors import Dialect, InvalidInput, stream_error
from app.generation.choices import Choices, TokenEvent
from app.generation.messages import Sampling
from app.limits import check_chars, request_cost
from app.settings import Settings
from textrnn.inference import token_logprobs

__all__ = [
    "encode_prompt",
    "event_stream",
    "open_choices",
    "prefill_logprobs",
    "seeds",
    "sse_events",
]


def encode_prompt(entry: ModelEntry, text: str, settings: Settings, truncate: int | None = None,
                  field: str = "inputs") -> tuple[int, ...]:
    """The prompt's token ids within the configured limit; the last `truncate` only."""
    check_chars(text, settings, field)
    assert entry.artifact is not None
    ids: list[int] = entry.artifact.tokenizer.encode(text, add_special_tokens=False).ids
    if truncate is not None:
        ids = ids[-truncate:]
    if not ids:
        raise InvalidInput(f"{field} must hold at least one character", param=field)
    return tuple(ids)


def seeds(seed: int | None, n: int) -> list[int]:
    """Seeds of `n` sibling generations (`best_of`, `n`): seed, seed + 1, ...; random if None."""
    if seed is None:
        return [secrets.randbelow(2**53) for _ in range(n)]
    return [(seed + i) % (2**53 + 1) for i in range(n)]


def open_choices(entry: ModelEntry, prompts: list[tuple[int, ...]], sampling: Sampling,
                 seed: int | None, n: int, settings: Settings, tenant: str = "",
                 field: str = "max_new_tokens") -> Choices:
    """Queue each prompt `n` times on the model's engine, within the request's budget: prompts
    × choices × tokens is what a request can make the service do, and RNN_MAX_REQUEST_TOKENS
    bounds it."""
    request_cost(settings, len(prompts), n, sampling.max_new_tokens, field)
    assert entry.generator is not None
    return entry.generator.open(prompts, sampling, seeds(seed, n), tenant)


async def prefill_logprobs(entry: ModelEntry, ids: tuple[int, ...]) -> list[float | None]:
    """Each prompt token's logprob given the tokens before it (None for the first), from the
    model's scoring pass on its inference thread."""
    assert entry.artifact is not None and entry.executor is not None
    net = entry.artifact.net

    def run() -> list[float | None]:
        with torch.inference_mode():
            values: list[float] = token_logprobs(net, [list(ids)])[0].tolist()  # type: ignore[arg-type]
        return [None, *values]

    return await asyncio.get_running_loop().run_in_executor(entry.executor, run)


async def sse_events(choices: Choices, flush_s: float,
                     frame: Callable[[list[tuple[int, TokenEvent]]], str],
                     dialect: Dialect, end: Callable[[], str] | None = None
                     ) -> AsyncIterator[str]:
    """The one stream loop of every protocol: each batch `choices.stream` yields becomes one
    write (`frame` formats it), then `end()`; an error after the stream began goes in-band in
    the protocol's dialect. The choices are closed however the stream ends (a client that
    left is dropped from the engine at its next turn)."""
    try:
        ended = False
        async for batch in choices.stream(flush_s):
            text = frame(batch)
            if choices.succeeded and end is not None:  # the last batch: its end in one write
                text, ended = text + end(), True
            if text:
                yield text
        if end is not None and not ended:
            yield end()
    except Exception as exc:
        yield stream_error(exc, dialect)
    finally:
        choices.close()


class _EventStream(StreamingResponse):
    """A StreamingResponse that closes its events' iterator however the answer ends: when a
    write fails (a client that stopped reading), the iterator's cleanup (cancelling its
    generations) runs at once, not whenever the collector finds it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


def event_stream(body: AsyncIterator[str], headers: dict[str, str]) -> StreamingResponse:
    """A server-sent events answer."""
    return _EventStream(body, media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache"} | headers)
