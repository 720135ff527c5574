"""Dynamic micro-batching for classification and scoring, shared fairly between requests.

Requests wait in a bounded queue per model. Whenever the inference worker is free, the
collector takes what is waiting (up to `max_batch_size` texts and `max_batch_cost`
characters) and runs it as one batch in the model's inference thread. A lone request never
waits for company; batches form from the requests that arrive while the worker is busy.
`max_wait_ms` may hold a batch open a little longer to fill it.

A request larger than one batch is read in pieces, one batch at a time, so it holds the
thread for one batch's time at most before others are served: requests that have not
started (in arrival order) and the unfinished ones (in turn) take the head of the batches
alternately, so neither a stream of new requests nor a long one holds the other back for more
than a batch. A request whose client went away is dropped with the pieces it has not run.

With API keys, each line is shared between the keys first: they take turns, a request of
each, whatever the number each has waiting, and no key holds more than half of the queue,
so one sender can neither crowd the others out of the batches nor fill the queue on them.

A batch that raises is run again piece by piece, so that one request's input fails that
request alone: it gets a 422 when the others in its batch were served, and every other
member gets its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.errors import DeadlineExceeded, InvalidInput, Overloaded
from app.logs import REQUEST_ID
from app.metrics import BATCH_SIZE, QUEUE_DEPTH, QUEUE_WAIT

__all__ = ["BatchEngine"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    request_id: str = field(default_factory=REQUEST_ID.get)  # for the log lines about it
    results: list[R | None] = field(default_factory=list)
    sender: str = ""  # who sent it (a digest of its API key; "" without keys)
    taken: int = 0  # items handed to batches so far
    done: int = 0  # items with their results

    @property
    def started(self) -> bool:
        return self.taken > 0


@dataclass
class _Piece(Generic[T, R]):
    """Items [start, end) of a request, run in one batch."""

    pending: _Pending[T, R]
    start: int
    end: int

    @property
    def items(self) -> Sequence[T]:
        return self.pending.items[self.start:self.end]


class _Line(Generic[T, R]):
    """Waiting requests, one queue per sender, the senders in turn: `popleft` gives the first
    request of the sender whose turn it is and sends that sender to the back; `appendleft`
    undoes it. Without keys there is one sender, and it is a plain queue."""

    def __init__(self) -> None:
        self._senders: dict[str, deque[_Pending[T, R]]] = {}  # in turn order

    def __len__(self) -> int:
        return sum(map(len, self._senders.values()))

    def __contains__(self, pending: object) -> bool:
        return isinstance(pending, _Pending) and pending in self._senders.get(pending.sender, ())

    def __iter__(self) -> Iterator[_Pending[T, R]]:
        for line in self._senders.values():
            yield from line

    def held(self, sender: str) -> int:
        """Requests of `sender` in this line."""
        return len(self._senders.get(sender, ()))

    def append(self, pending: _Pending[T, R]) -> None:
        self._senders.setdefault(pending.sender, deque()).append(pending)

    def popleft(self) -> _Pending[T, R]:
        sender, line = next(iter(self._senders.items()))
        pending = line.popleft()
        del self._senders[sender]
        if line:
            self._senders[sender] = line  # its turn again after the others'
        return pending

    def appendleft(self, pending: _Pending[T, R]) -> None:
        line = self._senders.pop(pending.sender, None) or deque()
        line.appendleft(pending)
        self._senders = {pending.sender: line, **self._senders}

    def remove(self, pending: _Pending[T, R]) -> None:
        line = self._senders[pending.sender]
        line.remove(pending)
        if not line:
            del self._senders[pending.sender]


class BatchEngine(Generic[T, R]):
    """Collects items from concurrent requests into batches for `run_batch`.

    `run_batch(items) -> results` runs in `executor` (one thread per model), one result per
    item, in order. `cost(item)` (characters) bounds a batch with `max_batch_cost`; an item
    over it alone is a batch of its own. When a batch raises, each of its pieces is run alone,
    and only a request whose piece fails alone fails.
    """

    def __init__(self, name: str, run_batch: Callable[[list[T]], list[R]],
                 executor: ThreadPoolExecutor, max_batch_size: int, max_queue: int,
                 max_wait_ms: float = 0.0, timeout_s: float = 60.0,
                 cost: Callable[[T], int] = lambda _: 1,
                 max_batch_cost: float = float("inf")) -> None:
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_wait_s = max_wait_ms / 1000
        self.timeout_s = timeout_s
        self.cost = cost
        self.max_batch_cost = max_batch_cost
        self.batches_run = 0
        self.batches_split = 0  # batches that raised and were run again piece by piece
        self.running = False
        self._fresh: _Line[T, R] = _Line()  # not started: first come, first served
        self._unfinished: _Line[T, R] = _Line()  # started, more to run: in turn
        self._fresh_first = True
        self._batch: list[_Piece[T, R]] = []  # the batch running now
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        """Stop the collector; requests still waiting are failed."""
        for piece in self._batch:  # running: its requests are answered no more
            _settle(piece.pending, Overloaded(f"model '{self.name}' is shutting down"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            # The cancelled task holds its exception, whose traceback holds the collector's
            # frame and so this engine: let go of it, or only the cyclic GC frees the model.
            self._task = None
        for line in (self._fresh, self._unfinished):
            while line:
                pending = line.popleft()
                if not pending.future.done():
                    pending.future.set_exception(
                        Overloaded(f"model '{self.name}' is shutting down"))

    @property
    def depth(self) -> int:
        """Requests waiting for the worker (whole, or the rest of them)."""
        return len(self._fresh) + len(self._unfinished)

    def _gauge(self) -> None:
        QUEUE_DEPTH.labels(self.name).set(self.depth)

    def submit(self, items: Sequence[T], sender: str = "") -> asyncio.Future[list[R]]:
        """Queue the items of one request from `sender` (a digest of its API key, "" without
        keys); the future gives their results. Cancelling it drops the request with the
        pieces it has not run.

        A future with callbacks rather than a coroutine: no task, no `wait_for` per request,
        just one timer for the deadline (504 when it has not started by then)."""
        if self.depth >= self.max_queue:
            raise Overloaded(f"model '{self.name}' has {self.max_queue} requests waiting; retry later")
        share = max(1, self.max_queue // 2)
        if sender and self._fresh.held(sender) + self._unfinished.held(sender) >= share:
            raise Overloaded(f"this API key has {share} requests waiting on model '{self.name}', "
                             "half of its queue (RNN_MAX_QUEUE); retry later")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending: _Pending[T, R] = _Pending(items, loop.create_future(), now, now + self.timeout_s,
                                           results=[None] * len(items), sender=sender)
        self._fresh.append(pending)
        self._gauge()
        self._wakeup.set()
        timer = loop.call_later(self.timeout_s, self._expire, pending)

        def settled(future: asyncio.Future[list[R]]) -> None:
            timer.cancel()
            if future.cancelled():  # the client went away: what it has not run is dropped
                for line in (self._fresh, self._unfinished):
                    if pending in line:
                        line.remove(pending)
                self._gauge()

        pending.future.add_done_callback(settled)
        return pending.future

    def _expire(self, pending: _Pending[T, R]) -> None:
        """The deadline passed: fail the request if it has not started (a started one is
        being served, a batch at a time, and is kept)."""
        if pending in self._fresh and not pending.future.done():
            self._fresh.remove(pending)
            self._gauge()
            pending.future.set_exception(DeadlineExceeded(
                f"request waited {self.timeout_s:g} s for the model, its deadline "
                "(RNN_REQUEST_TIMEOUT_S)"))

    def _take(self) -> list[_Piece[T, R]]:
        """The next batch: requests not yet started and the unfinished ones, alternately first,
        each giving what fits of its remaining items."""
        pieces: list[_Piece[T, R]] = []
        count = cost = 0
        now = time.monotonic()
        # Lines alternate at the head of the batch while both wait, so that neither a stream
        # of new requests nor a long unfinished one can hold the other back for long.
        lines = ((self._fresh, self._unfinished) if self._fresh_first
                 else (self._unfinished, self._fresh))
        if self._unfinished:
            self._fresh_first = not self._fresh_first
        for line in lines:
            for _ in range(len(line)):
                if count >= self.max_batch_size or cost >= self.max_batch_cost:
                    break
                pending = line.popleft()
                if pending.future.done():
                    continue
                if not pending.started:
                    if now > pending.deadline:
                        pending.future.set_exception(DeadlineExceeded(
                            f"request waited {now - pending.enqueued:.1f} s, over the "
                            f"{self.timeout_s:g} s deadline"))
                        continue
                    QUEUE_WAIT.labels(self.name).observe(now - pending.enqueued)
                start = end = pending.taken
                while end < len(pending.items) and count < self.max_batch_size:
                    weight = self.cost(pending.items[end])
                    if count and cost + weight > self.max_batch_cost:
                        break
                    count, cost, end = count + 1, cost + weight, end + 1
                if end == start:  # no room left in this batch: first in its line next time
                    line.appendleft(pending)
                    break
                pending.taken = end
                pieces.append(_Piece(pending, start, end))
                if end < len(pending.items):
                    self._unfinished.append(pending)
        self._gauge()
        return pieces

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.depth:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0:
                opened = time.monotonic()
                while (sum(len(p.items) for p in self._fresh) < self.max_batch_size
                       and time.monotonic() - opened < self.max_wait_s):
                    self._wakeup.clear()
                    remaining = self.max_wait_s - (time.monotonic() - opened)
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, remaining))
                    except TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            items = [item for piece in batch for item in piece.items]
            BATCH_SIZE.labels(self.name).observe(len(items))
            self.batches_run += 1
            self.running, self._batch = True, batch
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
            except Exception as exc:  # a failing batch fails no request yet, nor the collector
                if len(batch) == 1:  # alone already: the route logs it with its request id
                    _settle(batch[0].pending, exc)
                else:
                    await self._run_alone(batch, exc)
                continue
            finally:
                self.running, self._batch = False, []
            start = 0
            for piece in batch:
                end = start + len(piece.items)
                _deliver(piece, results[start:end])
                start = end

    async def _run_alone(self, batch: list[_Piece[T, R]], exc: Exception) -> None:
        """Run each piece of a batch that raised `exc` on its own. One that fails alone while
        another succeeds is at fault by its input (422); when all fail, the fault is the
        server's and each gets its own exception (500)."""
        self.batches_split += 1
        _log_for(batch, logging.WARNING, "batch of %d requests failed on model %s (%s); running "
                 "each alone", len(batch), self.name, type(exc).__name__, exc_info=exc)
        loop = asyncio.get_running_loop()
        failed: list[tuple[_Piece[T, R], Exception]] = []
        served = False
        for piece in batch:
            if piece.pending.future.done():  # the client went away meanwhile
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch,
                                                     list(piece.items))
            except Exception as error:
                failed.append((piece, error))
            else:
                served = True
                _deliver(piece, results)
        for piece, alone in failed:
            if not served:  # a server fault: the route logs it, with its traceback, as a 500
                _settle(piece.pending, alone)
                continue
            _log_for([piece], logging.WARNING, "request failed alone on model %s; answered 422",
                     self.name, exc_info=alone)
            _settle(piece.pending, InvalidInput(
                f"model '{self.name}' could not process the inputs of this request "
                f"({type(alone).__name__}); the other requests of its batch were served"))


def _deliver(piece: _Piece[T, R], results: list[R]) -> None:
    """A piece's results into its request; the request's answer once every piece is in."""
    pending = piece.pending
    if pending.future.done():
        return
    pending.results[piece.start:piece.end] = results
    pending.done += len(results)
    if pending.done == len(pending.items):
        pending.future.set_result(pending.results)  # type: ignore[arg-type]


def _settle(pending: _Pending[T, R], outcome: list[R] | Exception) -> None:
    """Resolve a request's future unless it is done already (cancelled by its client)."""
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)


def _log_for(batch: list[_Piece[T, R]], level: int, msg: str, *args: object,
             exc_info: BaseException) -> None:
    """Log a line under the request ids of `batch` (the collector runs outside any request)."""
    token = REQUEST_ID.set(",".join(p.pending.request_id for p in batch))
    try:
        log.log(level, msg, *args, exc_info=exc_info)
    finally:
        REQUEST_ID.reset(token)
