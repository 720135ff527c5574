"""Generation requests above the scheduler, shared by the TGI and OpenAI routes.

A request becomes one or more scheduler jobs (`best_of` and `n` are several seeded jobs); its
prompt is encoded and truncated here, and the prompt's own token logprobs (`prefill`) come
from the model's scoring pass, not from the scheduler. Nothing here changes what a job
generates, so a seeded job gives the same text whichever route asked for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from app.entry import ModelEntry
from app.errors import DeadlineExceeded, InvalidInput
from app.generation import Generation, TokenEvent
from app.settings import Settings
from textrnn.inference import token_logprobs

__all__ = [
    "Finished",
    "Sampling",
    "collect",
    "encode_prompt",
    "first_event",
    "merge_events",
    "next_event",
    "pause",
    "prefill_logprobs",
    "seeds",
    "submit",
]


@dataclass(frozen=True)
class Sampling:
    """What one job samples with, whichever protocol asked (greedy: temperature 0)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    typical_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    top_n_tokens: int = 0


@dataclass
class Finished:
    """A job's whole answer: every token event, the last one carrying the finish reason."""

    job: Generation
    events: list[TokenEvent]

    @property
    def text(self) -> str:
        """The generated text."""
        return "".join(e.text for e in self.events)

    @property
    def finish_reason(self) -> str:
        """Why it ended (`length`, `stop_sequence`, `cancelled`)."""
        return self.events[-1].finish_reason or "length"

    @property
    def logprob(self) -> float:
        """Total logprob of the generated tokens (how TGI ranks `best_of` candidates)."""
        return sum(e.logprob for e in self.events)


def encode_prompt(entry: ModelEntry, text: str, settings: Settings, truncate: int | None = None,
                  field: str = "inputs") -> list[int]:
    """The prompt's token ids within the configured limit; the last `truncate` only."""
    if len(text) > settings.max_input_chars:
        raise InvalidInput(f"{field} has {len(text)} characters; the limit is "
                           f"{settings.max_input_chars} (RNN_MAX_INPUT_CHARS)")
    assert entry.artifact is not None
    ids: list[int] = entry.artifact.tokenizer.encode(text, add_special_tokens=False).ids
    if truncate is not None:
        ids = ids[-truncate:]
    if not ids:
        raise InvalidInput(f"{field} must hold at least one character")
    return ids


def submit(entry: ModelEntry, prompt_ids: list[int], sampling: Sampling,
           seed: int | None) -> Generation:
    """Queue one job on the model's scheduler; an unseeded job gets a random seed."""
    assert entry.generator is not None
    return entry.generator.submit(
        prompt_ids, seed=seed if seed is not None else default_seed(),
        **dataclasses.asdict(sampling))


def seeds(seed: int | None, n: int) -> list[int | None]:
    """Seeds of `n` sibling jobs (`best_of`, `n`): seed, seed + 1, ...; all random if None."""
    if seed is None:
        return [None] * n
    return [(seed + i) % (2**53 + 1) for i in range(n)]


async def next_event(job: Generation) -> TokenEvent:
    """The job's next token event; a failure of the job is raised."""
    event = await job.events.get()
    if isinstance(event, BaseException):
        raise event
    return event


async def first_event(job: Generation, timeout_s: float) -> TokenEvent:
    """The first token; 504 when the job is still waiting for a place at its deadline."""
    try:
        return await asyncio.wait_for(next_event(job), timeout_s)
    except TimeoutError:
        if job.admitted:  # prefilled already: the token is moments away
            return await next_event(job)
        job.cancel()
        raise DeadlineExceeded(f"request waited {timeout_s:g} s for a generation slot, its "
                               "deadline (RNN_REQUEST_TIMEOUT_S)") from None


async def collect(job: Generation, timeout_s: float) -> Finished:
    """Every token of one job, up to its last. The request wakes once, when its last token
    (or an error) has arrived, not once per token."""
    try:
        events = [await first_event(job, timeout_s)]
        await pause(job, None)
        while events[-1].finish_reason is None:
            events.append(await next_event(job))
    except BaseException:
        job.cancel()
        raise
    return Finished(job, events)


async def pause(job: Generation, seconds: float | None) -> None:
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


async def merge_events(jobs: list[Generation], timeout_s: float
                       ) -> AsyncIterator[tuple[int, TokenEvent]]:
    """The token events of several jobs as they come, each with its job's position; every
    job is cancelled when the consumer stops early."""
    queue: asyncio.Queue[tuple[int, TokenEvent] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, job: Generation) -> None:
        try:
            event = await first_event(job, timeout_s)
            await queue.put((i, event))
            while event.finish_reason is None:
                event = await next_event(job)
                await queue.put((i, event))
        except Exception as exc:
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for job in jobs:
            job.cancel()


async def prefill_logprobs(entry: ModelEntry, ids: list[int]) -> list[float | None]:
    """Each prompt token's logprob given the tokens before it (None for the first), from the
    model's scoring pass on its inference thread."""
    assert entry.artifact is not None and entry.executor is not None
    net = entry.artifact.net

    def run() -> list[float | None]:
        with torch.inference_mode():
            values: list[float] = token_logprobs(net, [ids])[0].tolist()  # type: ignore[arg-type]
        return [None, *values]

    return await asyncio.get_running_loop().run_in_executor(entry.executor, run)


def default_seed() -> int:
    """A fresh random seed for a request that gave none."""
    return secrets.randbelow(2**53)
