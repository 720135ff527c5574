"""The server's side of generation: requests in, tokens out, metrics at the boundary.

`Generator` owns one model's transport (a thread or a worker process running the engine),
turns a request into a `GenerationSpec`, and applies each `Turn` the transport hands back on
the event loop: it gives every request its tokens, fails the ones that failed, and records
the metrics, here and only here, whichever transport ran the turn.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from app.errors import DeadlineExceeded, Overloaded
from app.generation.choices import Choices, Generation, TokenEvent
from app.generation.messages import Command, GenerationSpec, Sampling, StepWrapper, Turn
from app.metrics import (
    ACTIVE_SEQUENCES,
    BATCH_SIZE,
    GENERATED_TOKENS,
    MODEL_READY,
    QUEUE_DEPTH,
    QUEUE_WAIT,
    TIME_TO_FIRST_TOKEN,
)

__all__ = ["GenerationFailed", "Generator", "Transport"]

log = logging.getLogger(__name__)

# Waits before starting a lost engine's replacement: the first, the most, and how long an
# engine must have run for its loss to start the backoff over.
RESTART_FIRST_S = 0.1
RESTART_MAX_S = 30.0
RESTART_STABLE_S = 30.0


class GenerationFailed(Exception):
    """A generation step failed on the server's side (a fault of the server, not the input)."""


class Transport(Protocol):
    """Runs an engine somewhere and carries commands in and turns out (on the event loop)."""

    async def start(self, on_turn: Callable[[Turn], None], on_lost: Callable[[str], None],
                    wrap_step: StepWrapper | None = None) -> None:
        """Start the engine; returns once it can take requests."""

    def send(self, command: Command) -> None:
        """Hand the engine a request or a cancellation (on the event loop)."""

    async def stop(self) -> None:
        """Stop the engine after its current turn."""


class Generator:
    """One language model's generation: its transport, its requests, its metrics."""

    def __init__(self, name: str, transport: Transport, texts: list[str], max_queue: int,
                 timeout_s: float) -> None:
        self.name, self.transport, self.texts = name, transport, texts
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.requests: dict[int, Generation] = {}
        self.active = 0  # sequences in the engine's batch, as of its last turn
        self.steps_run = 0
        self._ids = itertools.count()
        self._stopping = False
        self._restarting: asyncio.Task[None] | None = None
        self.restarting = False  # the engine was lost and its replacement is not up yet
        self.lost_reason = ""
        self.restarts = 0  # attempts to start a replacement engine
        self._delay = RESTART_FIRST_S  # the wait before the next replacement
        self._started_at = 0.0
        self._wrap_step: StepWrapper | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once started

    @property
    def waiting(self) -> int:
        """Requests sent to the engine and not yet in its batch."""
        return max(0, len(self.requests) - self.active)

    async def start(self, wrap_step: StepWrapper | None = None) -> None:
        """Start the transport's engine."""
        self._stopping = False
        self.loop = asyncio.get_running_loop()
        self._wrap_step = wrap_step
        await self.transport.start(self._on_turn, self._on_lost, wrap_step)
        self._started_at = time.monotonic()

    async def stop(self) -> None:
        """Stop the engine; unfinished requests get a 503."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
            self._restarting = None
        await self.transport.stop()
        self._fail_all(Overloaded(f"model '{self.name}' is shutting down"))

    async def restart(self, wrap_step: StepWrapper | None = None) -> None:
        """Replace the engine with a fresh one (`wrap_step` applied to its net's steps);
        unfinished requests get a 503."""
        await self.stop()
        await self.start(wrap_step)

    def open(self, prompts: list[tuple[int, ...]], sampling: Sampling, seeds: list[int],
             tenant: str = "") -> Choices:
        """Queue a request's generations (on the event loop): each prompt with each seed, in
        one group the engine shares its slots fairly with. `Overloaded` when they do not all
        fit in the queue (none is queued then)."""
        count = len(prompts) * len(seeds)
        if self.restarting:  # nothing would take it: refused now, not at its deadline
            raise Overloaded(f"model '{self.name}' is restarting its generation engine (it "
                             f"stopped: {self.lost_reason}); retry shortly")
        if self.waiting + count > self.max_queue:
            raise Overloaded(f"model '{self.name}' has {self.waiting} generations waiting and "
                             f"takes {self.max_queue} (RNN_MAX_QUEUE); this request adds "
                             f"{count}; retry later")
        now = time.monotonic()
        group = next(self._ids)
        specs = [GenerationSpec(next(self._ids), prompt, sampling, seed=seed, enqueued=now,
                                deadline=now + self.timeout_s, group=group, tenant=tenant)
                 for prompt in prompts for seed in seeds]
        choices = Choices(specs, self._cancel, self.timeout_s)
        for member in choices.members:
            self.requests[member.spec.id] = member
            self.transport.send(member.spec)
        QUEUE_DEPTH.labels(self.name).set(self.waiting)
        return choices

    def _cancel(self, request: int) -> None:
        if self.requests.pop(request, None) is not None:
            self.transport.send(request)

    def _on_turn(self, turn: Turn) -> None:
        """Apply a turn (on the event loop): tokens, failures, metrics."""
        name, requests, texts = self.name, self.requests, self.texts
        now = time.monotonic()
        for request, waited in turn.admitted:
            QUEUE_WAIT.labels(name).observe(waited)
            if (generation := requests.get(request)) is not None:
                generation.admitted = True
        finished, alternatives = turn.finished, turn.alternatives
        # A request may have several tokens in a turn (its prompt's last chunk, then the step;
        # turns merged by the engine's loop): its finish reason belongs to the last of them.
        ends = {turn.requests[i]: i for i in range(len(turn.requests))} if finished else {}
        for at, (request, token, logprob) in enumerate(zip(turn.requests, turn.tokens,
                                                           turn.logprobs, strict=True)):
            generation = requests.get(request)
            if generation is None:  # cancelled meanwhile
                continue
            if generation.generated == 0:
                TIME_TO_FIRST_TOKEN.labels(name).observe(now - generation.spec.enqueued)
            reason = finished.get(request) if ends.get(request) == at else None
            top = alternatives.get(at) if alternatives else None
            event = TokenEvent(generation.generated, token, texts[token], logprob, reason,
                               None if top is None else [(i, texts[i], lp) for i, lp in top])
            generation.generated += 1
            if reason is not None:
                del requests[request]
            generation.put(event)
        # Failures after the tokens: a request's tokens from the turns before its failed
        # step reach it (a stream sends them) before the error.
        for failure in turn.failures:
            generation = requests.pop(failure.request, None)
            if generation is not None:
                generation.put(DeadlineExceeded(failure.message) if failure.kind == "deadline"
                               else GenerationFailed(failure.message))
        for rows in turn.steps:
            BATCH_SIZE.labels(name).observe(rows)
        self.steps_run += len(turn.steps)
        if turn.requests:
            GENERATED_TOKENS.labels(name).inc(len(turn.requests))
        self.active = turn.active
        ACTIVE_SEQUENCES.labels(name).set(turn.active)
        QUEUE_DEPTH.labels(name).set(self.waiting)

    def _on_lost(self, why: str) -> None:
        """The engine's thread or process ended unasked: fail what it held, start another."""
        if self._stopping:
            return
        # An engine that dies soon after it started is likely to again: each quick loss
        # doubles the wait before the next start (up to RESTART_MAX_S).
        lived = time.monotonic() - self._started_at
        self._delay = (RESTART_FIRST_S if lived > RESTART_STABLE_S
                       else min(self._delay * 2, RESTART_MAX_S))
        log.error("generation engine of model %s lost (%s) after %.1f s; %d requests failed; "
                  "restarting in %.1f s", self.name, why, lived, len(self.requests), self._delay)
        self._fail_all(Overloaded(f"model '{self.name}' lost its generation worker; retry"))
        self.restarting, self.lost_reason = True, why
        MODEL_READY.labels(self.name).set(0)
        if self._restarting is None or self._restarting.done():
            self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        """Start a replacement engine after the backoff, and again (waiting twice as long)
        until one starts or the generator stops."""
        while not self._stopping:
            await asyncio.sleep(self._delay)
            self.restarts += 1
            try:
                await self.start(self._wrap_step)
            except Exception as e:
                self._delay = min(self._delay * 2, RESTART_MAX_S)
                self.lost_reason = f"{self.lost_reason.split('; ')[0]}; restart failed: {e}"
                log.error("generation engine of model %s did not start (%s); next try in "
                          "%.1f s", self.name, e, self._delay)
                continue
            self.restarting = False
            MODEL_READY.labels(self.name).set(1)
            log.info("generation engine of model %s is back", self.name)
            return

    def _fail_all(self, error: BaseException) -> None:
        requests, self.requests = self.requests, {}
        self.active = 0
        for generation in requests.values():
            generation.put(error)
        ACTIVE_SEQUENCES.labels(self.name).set(0)
        QUEUE_DEPTH.labels(self.name).set(0)
