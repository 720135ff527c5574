"""One request's generations as its route consumes them: the one front end over the engine.

A request becomes a `Choices`: its prompts times its `n` (or `best_of`) generations, each a
`Generation` in the engine. The routes of every protocol consume it the same way, and only
format what it yields:

- `await choices.first()` before an answer starts: an error before the first token (a full
  queue, a deadline in the queue) is raised there, so it keeps its HTTP status on every route;
- `async for batch in choices.stream(flush_s)`: the tokens of all members as they come, the
  first at once, later ones at most every `flush_s` in one batch (one write per batch);
- `await choices.finished()`: every member's whole answer, waking the request once.

It owns the deadline (a member still queued at it fails the request with 504), and failure
and cancellation are structured: one member's failure cancels the others, and `close()` (the
client left, the route is done) cancels every member still generating and wakes a consumer.
Events are delivered by the `Generator` on the event loop; nothing here touches the engine.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from app.errors import ClientGone, DeadlineExceeded
from app.generation.messages import GenerationSpec

__all__ = ["Choices", "Finished", "Generation", "TokenEvent"]


@dataclass(slots=True)
class TokenEvent:
    """One generated token; `finish_reason` is set on a generation's last."""

    index: int
    id: int
    text: str
    logprob: float
    finish_reason: str | None = None
    top_tokens: list[tuple[int, str, float]] | None = None  # (id, text, logprob), best first


class Generation:
    """One member of a request as the server sees it: its spec and how far it has come."""

    __slots__ = ("admitted", "choices", "ended", "generated", "index", "spec")

    def __init__(self, spec: GenerationSpec, choices: Choices, index: int) -> None:
        self.spec, self.choices, self.index = spec, choices, index
        self.admitted = False  # in the engine's batch: its first token is moments away
        self.ended = False  # its last event has arrived, or it was cancelled
        self.generated = 0

    def put(self, event: TokenEvent | BaseException) -> None:
        """Hand the member an event (the Generator does, on the event loop)."""
        self.choices.deliver(self, event)


@dataclass
class Finished:
    """A member's whole answer: every token event, the last one carrying the finish reason."""

    generation: Generation
    events: list[TokenEvent]

    @property
    def text(self) -> str:
        """The generated text."""
        return "".join(e.text for e in self.events)

    @property
    def finish_reason(self) -> str:
        """Why it ended (`length`, `stop_sequence`)."""
        return self.events[-1].finish_reason or "length"

    @property
    def logprob(self) -> float:
        """Total logprob of the generated tokens (how TGI ranks `best_of` candidates)."""
        return sum(e.logprob for e in self.events)

    @property
    def seed(self) -> int:
        """The seed it sampled with."""
        return self.generation.spec.seed


_Wake = Literal["any", "end"]


def _nothing_to_cancel(_: int) -> None:
    """The cancel of a request whose members have all ended."""


class Choices:
    """The generations of one request, consumed as one (see the module's docstring)."""

    def __init__(self, specs: list[GenerationSpec], cancel: Callable[[int], None],
                 timeout_s: float) -> None:
        self.members = [Generation(spec, self, i) for i, spec in enumerate(specs)]
        self._cancel = cancel
        self._events: deque[tuple[int, TokenEvent]] = deque()
        self._answers: list[list[TokenEvent]] = [[] for _ in specs]
        self._error: BaseException | None = None
        self._open = len(specs)  # members still generating
        self._waiter: asyncio.Future[None] | None = None
        self._wake: _Wake = "any"
        self.timeout_s = timeout_s
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout_s, self._deadline)

    @property
    def done(self) -> bool:
        """Whether every member has ended (finished, failed or cancelled)."""
        return self._open == 0

    @property
    def succeeded(self) -> bool:
        """Whether every member has finished with all its tokens (no failure, no cancel)."""
        return self._open == 0 and self._error is None

    def deliver(self, member: Generation, event: TokenEvent | BaseException) -> None:
        """A member's event: a token (kept for the consumer) or its failure (the request's)."""
        if member.ended:
            return
        if isinstance(event, BaseException):
            self._end(member)
            self._fail(event)
            return
        self._events.append((member.index, event))
        self._answers[member.index].append(event)
        if event.finish_reason is not None:
            self._end(member)
        if self._waiter is not None and (self._wake == "any" or self.done):
            self._resolve()

    def close(self) -> None:
        """Cancel every member still generating (idempotent) and wake a waiting consumer."""
        self._fail(ClientGone("the request was cancelled"))

    async def first(self) -> None:
        """Return once a token has arrived; raise the request's error if it failed first."""
        while not self._events:
            self._raise()
            await self._wait("any", None)

    async def stream(self, flush_s: float) -> AsyncIterator[list[tuple[int, TokenEvent]]]:
        """Every token as (member index, event), in batches: what has arrived goes at once,
        then the consumer rests `flush_s` (cut short by the end) before the next batch. A
        failure is raised after the tokens that came before it."""
        while True:
            if self._events:
                batch = list(self._events)
                self._events.clear()
                yield batch  # more may arrive while the consumer writes: loop again
                if flush_s and not self.done:
                    await self._wait("end", flush_s)
                continue
            self._raise()
            if self.done:
                return
            await self._wait("any", None)

    async def finished(self) -> list[Finished]:
        """Every member's whole answer, in member order; wakes once, at the end."""
        while not self.done:
            await self._wait("end", None)
        self._raise()
        return [Finished(m, events) for m, events in zip(self.members, self._answers, strict=True)]

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _end(self, member: Generation) -> None:
        member.ended = True
        self._open -= 1
        if self._open == 0:
            # Members and their Choices refer to each other, a cycle only the cyclic GC
            # frees: once all have ended, it must not hold the generator (and its model).
            self._cancel = _nothing_to_cancel
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _fail(self, error: BaseException) -> None:
        """The request fails with `error` (the first one wins); its other members stop."""
        if self._error is None:
            self._error = error
        cancel = self._cancel  # ending the last member lets go of it
        for member in self.members:
            if not member.ended:
                self._end(member)
                cancel(member.spec.id)
        self._resolve()

    def _deadline(self) -> None:
        """At the deadline, a member the engine has not taken in fails the request."""
        self._timer = None
        if any(not m.admitted and not m.ended for m in self.members):
            self._fail(DeadlineExceeded(
                f"request waited {self.timeout_s:g} s for a generation slot, its deadline "
                "(RNN_REQUEST_TIMEOUT_S)"))

    async def _wait(self, wake: _Wake, seconds: float | None) -> None:
        if self._error is not None or (wake == "end" and self.done):
            return
        loop = asyncio.get_running_loop()
        self._wake, self._waiter = wake, loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, self._resolve)
        try:
            await self._waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def _resolve(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
