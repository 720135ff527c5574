"""Dynamic micro-batching for classification and scoring.

Requests wait in a bounded queue per model. Whenever the inference worker is free, the
collector takes everything waiting (up to `max_batch_size` texts) and runs it as one batch in
the model's inference thread. A lone request never waits for company; batches form from the
requests that arrive while the worker is busy. `max_wait_ms` may hold a batch open a little
longer to fill it.

A batch that raises is run again member by member, so that one request's input fails that
request alone: it gets a 422 when the others in its batch were served, and every other
member gets its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
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


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    request_id: str = field(default_factory=REQUEST_ID.get)  # for the log lines about it


class BatchEngine(Generic[T, R]):
    """Collects items from concurrent requests into batches for `run_batch`.

    `run_batch(items) -> results` runs in `executor` (one thread per model), one result per
    item, in order. When it raises, each request of the batch is run alone, and only a
    request that fails alone fails.
    """

    def __init__(self, name: str, run_batch: Callable[[list[T]], list[R]],
                 executor: ThreadPoolExecutor, max_batch_size: int, max_queue: int,
                 max_wait_ms: float = 0.0, timeout_s: float = 60.0) -> None:
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_wait_s = max_wait_ms / 1000
        self.timeout_s = timeout_s
        self.batches_run = 0
        self.batches_split = 0  # batches that raised and were run again member by member
        self.running = False
        self._waiting: deque[_Pending[T, R]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        """Stop the collector; requests still waiting are failed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._waiting:
            pending = self._waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(Overloaded(f"model '{self.name}' is shutting down"))

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return len(self._waiting)

    def submit(self, items: Sequence[T]) -> asyncio.Future[list[R]]:
        """Queue the items of one request; the future gives their results. Cancelling it
        drops the request if it has not been taken into a batch yet.

        A future with callbacks rather than a coroutine: no task, no `wait_for` per request,
        just one timer for the deadline (504 when still queued at it)."""
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(f"model '{self.name}' has {self.max_queue} requests waiting; retry later")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending: _Pending[T, R] = _Pending(items, loop.create_future(), now, now + self.timeout_s)
        self._waiting.append(pending)
        QUEUE_DEPTH.labels(self.name).set(len(self._waiting))
        self._wakeup.set()
        timer = loop.call_later(self.timeout_s, self._expire, pending)

        def settled(future: asyncio.Future[list[R]]) -> None:
            timer.cancel()
            if future.cancelled() and pending in self._waiting:  # the client went away
                self._waiting.remove(pending)
                QUEUE_DEPTH.labels(self.name).set(len(self._waiting))

        pending.future.add_done_callback(settled)
        return pending.future

    def _expire(self, pending: _Pending[T, R]) -> None:
        """The deadline passed: fail the request if it is still queued (a running one's
        answer is moments away and is kept)."""
        if pending in self._waiting and not pending.future.done():
            self._waiting.remove(pending)
            QUEUE_DEPTH.labels(self.name).set(len(self._waiting))
            pending.future.set_exception(DeadlineExceeded(
                f"request waited {self.timeout_s:g} s for the model, its deadline "
                "(RNN_REQUEST_TIMEOUT_S)"))

    def _take(self) -> list[_Pending[T, R]]:
        taken: list[_Pending[T, R]] = []
        count = 0
        now = time.monotonic()
        while self._waiting:
            head = self._waiting[0]
            if taken and count + len(head.items) > self.max_batch_size:
                break
            self._waiting.popleft()
            if head.future.done():
                continue
            if now > head.deadline:
                head.future.set_exception(DeadlineExceeded(
                    f"request waited {now - head.enqueued:.1f} s, over the "
                    f"{self.timeout_s:g} s deadline"))
                continue
            QUEUE_WAIT.labels(self.name).observe(now - head.enqueued)
            taken.append(head)
            count += len(head.items)
        QUEUE_DEPTH.labels(self.name).set(len(self._waiting))
        return taken

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0:
                opened = time.monotonic()
                while (sum(len(p.items) for p in self._waiting) < self.max_batch_size
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
            items = [item for pending in batch for item in pending.items]
            BATCH_SIZE.labels(self.name).observe(len(items))
            self.batches_run += 1
            self.running = True
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
            except Exception as exc:  # a failing batch fails no request yet, nor the collector
                if len(batch) == 1:  # alone already: the route logs it with its request id
                    _settle(batch[0], exc)
                else:
                    await self._run_alone(batch, exc)
                continue
            finally:
                self.running = False
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                _settle(pending, results[start:end])
                start = end

    async def _run_alone(self, batch: list[_Pending[T, R]], exc: Exception) -> None:
        """Run each request of a batch that raised `exc` on its own. One that fails alone while
        another succeeds is at fault by its input (422); when all fail, the fault is the
        server's and each gets its own exception (500)."""
        self.batches_split += 1
        _log_for(batch, logging.WARNING, "batch of %d requests failed on model %s (%s); running "
                 "each alone", len(batch), self.name, type(exc).__name__, exc_info=exc)
        loop = asyncio.get_running_loop()
        failed: list[tuple[_Pending[T, R], Exception]] = []
        served = False
        for pending in batch:
            if pending.future.done():  # the client went away meanwhile
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch,
                                                     list(pending.items))
            except Exception as error:
                failed.append((pending, error))
            else:
                served = True
                _settle(pending, results)
        for pending, alone in failed:
            if not served:  # a server fault: the route logs it, with its traceback, as a 500
                _settle(pending, alone)
                continue
            _log_for([pending], logging.WARNING, "request failed alone on model %s; answered 422",
                     self.name, exc_info=alone)
            _settle(pending, InvalidInput(
                f"model '{self.name}' could not process the inputs of this request "
                f"({type(alone).__name__}); the other requests of its batch were served"))


def _settle(pending: _Pending[T, R], outcome: list[R] | Exception) -> None:
    """Resolve a request's future unless it is done already (cancelled by its client)."""
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)


def _log_for(batch: list[_Pending[T, R]], level: int, msg: str, *args: object,
             exc_info: BaseException) -> None:
    """Log a line under the request ids of `batch` (the collector runs outside any request)."""
    token = REQUEST_ID.set(",".join(p.request_id for p in batch))
    try:
        log.log(level, msg, *args, exc_info=exc_info)
    finally:
        REQUEST_ID.reset(token)
