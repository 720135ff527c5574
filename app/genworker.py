"""Generation in a worker process: `ProcessScheduler` (`RNN_GENERATION_WORKER=process`).

The thread scheduler (`app.generation.GenerationScheduler`) shares the GIL with the event
loop. Each step runs two dozen small tensor operations, each of which hands the GIL back
and forth, and the event loop's work for the tokens it streams out waits for it in turn.
Here the same scheduler loop runs in a child process, forked from the server once the model
is loaded, so it shares the model's memory pages rather than copying them. The two processes
share no GIL: a step never waits for the event loop, and the event loop never waits for a
step's Python.

The parent keeps each request's `GenerationJob` (and its event queue) and sends the child a
plain description of it over a socket pair; the child sends back, once per step, that step's
tokens for every sequence, with the batch size (for the metrics). A request's cancellation is
one message. If the child dies, the requests it held fail with 503 and a new child is forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from app.errors import Overloaded
from app.generation import GenerationJob, GenerationScheduler, TokenEvent, _deliver
from app.metrics import ACTIVE_SEQUENCES, BATCH_SIZE, GENERATED_TOKENS, QUEUE_DEPTH, TIME_TO_FIRST_TOKEN
from textrnn.artifact import Artifact

__all__ = ["ProcessScheduler"]

log = logging.getLogger(__name__)

# What a job's description carries to the child (everything but its asyncio parts).
_FIELDS = ("prompt_ids", "max_new_tokens", "temperature", "top_k", "top_p",
           "repetition_penalty", "seed", "stop", "enqueued", "deadline", "typical_p",
           "frequency_penalty", "presence_penalty", "top_n_tokens")


class ProcessScheduler:
    """The generation scheduler of one model in a forked child process; the same interface
    as `GenerationScheduler` for the routes and the registry."""

    def __init__(self, artifact: Artifact, device: torch.device, max_active: int,
                 max_queue: int, timeout_s: float = 60.0) -> None:
        self.artifact, self.device = artifact, device
        self.name, self.net = artifact.name, artifact.net  # the child's copy is forked from it
        self.max_active, self.max_queue, self.timeout_s = max_active, max_queue, timeout_s
        self.steps_run = 0
        self.pid = 0
        self.jobs: dict[int, GenerationJob] = {}
        self._ids = itertools.count()
        self._conn: Connection | None = None  # the child's messages (read when readable)
        self._down: socket.socket | None = None  # to the child: non-blocking, buffered in _out
        self._out = bytearray()
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._active = 0  # sequences in the child's batch, as of its last step

    @property
    def active(self) -> int:
        """Sequences in the running batch (as of the child's last step)."""
        return self._active

    @property
    def waiting(self) -> int:
        """Jobs sent to the child and not yet in its batch."""
        return max(0, len(self.jobs) - self._active)

    def start(self) -> None:
        """Fork the child (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None
        scheduler = GenerationScheduler(self.artifact, self.device, self.max_active,
                                        self.max_queue, self.timeout_s)
        # Two socket pairs: the server never blocks writing to a busy child (its end of `down`
        # is non-blocking and buffered), while the child may block writing `up` to a busy
        # server, which is the back-pressure a step's tokens should have.
        down, down_child = socket.socketpair()
        up, up_child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the child: serve, and never return into the server's code
            code = 1
            try:
                down.close()
                up.close()
                _child(scheduler, down_child, up_child)
                code = 0
            finally:
                os._exit(code)
        down_child.close()
        up_child.close()
        self.pid = pid
        down.setblocking(False)
        self._down, self._out, self._writing = down, bytearray(), False
        self._conn = Connection(up.detach())
        self._loop.add_reader(self._conn.fileno(), self._readable)
        log.info("generation worker for model %s started (pid %d)", self.name, pid)

    def submit(self, job: GenerationJob) -> None:
        """Send a job to the child (from the event loop); `Overloaded` when too many wait."""
        if self.waiting >= self.max_queue:
            raise Overloaded(f"model '{self.name}' has {self.max_queue} generations waiting; "
                             "retry later")
        if self._down is None:
            raise Overloaded(f"model '{self.name}' is not generating; retry later")
        job.deadline = job.enqueued + self.timeout_s
        jid = next(self._ids)
        self.jobs[jid] = job
        job.on_cancel = lambda: self._cancel(jid)
        self._send(("job", jid, {name: getattr(job, name) for name in _FIELDS}))
        QUEUE_DEPTH.labels(self.name).set(self.waiting)

    def _cancel(self, jid: int) -> None:
        if self.jobs.pop(jid, None) is not None:
            self._send(("cancel", jid, None))

    def _send(self, message: tuple[str, int, Any]) -> None:
        """Queue a message for the child (on the event loop), framed as `Connection` frames."""
        if self._down is None:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._out += struct.pack("!i", len(data)) + data
        self._flush()

    def _flush(self) -> None:
        down, loop = self._down, self._loop
        if down is None or loop is None:
            return
        while self._out:
            try:
                sent = down.send(self._out)
            except BlockingIOError:
                break
            except OSError:  # the child is gone: the reader callback respawns it
                self._out.clear()
                break
            del self._out[:sent]
        if bool(self._out) != self._writing:
            self._writing = bool(self._out)
            if self._writing:
                loop.add_writer(down.fileno(), self._flush)
            else:
                loop.remove_writer(down.fileno())

    def _readable(self) -> None:
        """Messages from the child (on the event loop)."""
        conn = self._conn
        try:
            while conn is not None and conn.poll():
                kind, payload, active = conn.recv()
                self._active = active
                if kind == "events":
                    self._events(payload)
                else:  # "error": (jid, exception)
                    jid, error = payload
                    job = self.jobs.pop(jid, None)
                    if job is not None:
                        job.put(error)
        except (EOFError, OSError):
            self._lost()

    def _events(self, events: list[tuple[int, TokenEvent]]) -> None:
        self.steps_run += 1
        BATCH_SIZE.labels(self.name).observe(len(events))
        GENERATED_TOKENS.labels(self.name).inc(len(events))
        ACTIVE_SEQUENCES.labels(self.name).set(self._active)
        now = time.monotonic()
        for jid, event in events:
            job = self.jobs.get(jid)
            if job is None:  # cancelled meanwhile
                continue
            if event.index == 0:  # prefilled: admitted in the same turn
                job.admitted = True
                TIME_TO_FIRST_TOKEN.labels(self.name).observe(now - job.enqueued)
            job.put(event)
            if event.finish_reason is not None:
                del self.jobs[jid]
        QUEUE_DEPTH.labels(self.name).set(self.waiting)

    def _lost(self) -> None:
        """The child exited: fail what it held, reap it, and fork a new one."""
        self._close()
        code = _reap(self.pid, wait_s=1.0)
        if self._stopping:  # stopped or restarted on purpose
            return
        log.error("generation worker for model %s exited (%s); %d requests failed; restarting",
                  self.name, code, len(self.jobs))
        self._fail_all(Overloaded(f"model '{self.name}' lost its generation worker; retry"))
        self._spawn()

    def _close(self) -> None:
        if self._loop is not None:
            if self._conn is not None:
                self._loop.remove_reader(self._conn.fileno())
                self._conn.close()
            if self._down is not None:
                if self._writing:
                    self._loop.remove_writer(self._down.fileno())
                self._down.close()
        self._conn = self._down = None
        self._out, self._writing, self._active = bytearray(), False, 0

    def _fail_all(self, error: BaseException) -> None:
        jobs, self.jobs = self.jobs, {}
        for job in jobs.values():
            job.put(error)

    def stop(self) -> None:
        """Stop the child (from any thread); unfinished jobs get an error."""
        if self._loop is None:
            self._stopping = True
            return
        how = self._end_child(Overloaded(f"model '{self.name}' is shutting down"), spawn=False)
        log.info("generation worker for model %s stopped (%s)", self.name, how)

    def restart(self) -> None:
        """Replace the child with one forked now (from any thread), which sees the model as
        it is now; unfinished jobs get an error."""
        self._end_child(Overloaded(f"model '{self.name}' restarted its generation worker; "
                                   "retry"), spawn=True)

    def _end_child(self, error: BaseException, spawn: bool) -> str:
        """Tell the child to stop, reap it, fail its jobs with `error`, and fork another if
        `spawn`; how the child ended."""
        self._stopping = True  # the child's exit is not news to `_lost`
        self._tell_stop()
        how = _reap(self.pid, wait_s=10.0)
        self._on_loop(lambda: self._drop_worker(error, spawn))
        return how

    def _tell_stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._on_loop(lambda: self._send(("stop", 0, None)))
        else:  # no loop to send from: the child dies of SIGTERM's default action
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def _drop_worker(self, error: BaseException, spawn: bool) -> None:
        self._close()
        self._fail_all(error)
        if spawn:
            self._stopping = False
            self._spawn()

    def _on_loop(self, fn: Any) -> None:
        """Run `fn` on the event loop and wait for it."""
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        elif not loop.is_closed():
            asyncio.run_coroutine_threadsafe(_call(fn), loop).result(timeout=10)


async def _call(fn: Any) -> None:
    fn()


def _reap(pid: int, wait_s: float) -> str:
    """Wait up to `wait_s` for the child to exit, then kill it; how it ended."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if done:
            return f"status {status}"
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):  # reaped meanwhile
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.01)


@dataclass
class _ChildJob(GenerationJob):
    """A job in the child: `jid` names it to the server, and its errors go there."""

    jid: int = -1

    def _emit(self, event: TokenEvent | BaseException) -> None:
        # Only errors come this way; a step's tokens go out together (`_Outbox`).
        assert isinstance(event, BaseException) and isinstance(self.loop, _Outbox)
        self.loop.send_error(self.jid, event)


class _Outbox:
    """Stands in for the event loop in the child: what the scheduler hands the loop goes
    to the server instead (see `GenerationScheduler._emit_tokens` and `_ChildJob._emit`)."""

    def __init__(self, conn: Connection, scheduler: GenerationScheduler,
                 jobs: dict[int, _ChildJob]) -> None:
        self.conn, self.scheduler, self.jobs = conn, scheduler, jobs

    def call_soon_threadsafe(self, fn: Any, out: list[tuple[_ChildJob, TokenEvent]]) -> None:
        """`fn` is `_deliver`, `out` one step's tokens."""
        assert fn is _deliver
        events = [(job.jid, event) for job, event in out]
        for jid, event in events:
            if event.finish_reason is not None:
                self.jobs.pop(jid, None)
        self.conn.send(("events", events, len(self.scheduler._batch.jobs)))

    def send_error(self, jid: int, error: BaseException) -> None:
        if self.jobs.pop(jid, None) is not None:
            self.conn.send(("error", (jid, _picklable(error)), len(self.scheduler._batch.jobs)))


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _child(scheduler: GenerationScheduler, down: socket.socket, up: socket.socket) -> None:
    """The child's loop: take jobs and cancellations, run the scheduler's turns."""
    gc.freeze()  # the server's objects stay untouched here: never collected, never finalised
    keep = sorted((down.fileno(), up.fileno()))
    # The server's sockets: a client's connection must close when the server closes it.
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 1 << 16)
    with contextlib.suppress(ValueError):  # the server's signal wake-up pipe is not ours
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # One torch thread: an OpenMP pool the server started before the fork would not survive
    # it (GNU OpenMP is not fork-safe), and one thread per process is this service's setting.
    torch.set_num_threads(1)
    # This loop waits on the socket. Were the scheduler to wait in its queue, a queue of jobs
    # that were all cancelled would block the child where no message can wake it.
    scheduler.wait_in_queue = False
    conn, out = Connection(down.detach()), Connection(up.detach())
    jobs: dict[int, _ChildJob] = {}
    outbox = _Outbox(out, scheduler, jobs)
    with torch.inference_mode():
        while True:
            idle = not scheduler._batch.jobs and scheduler._inbox.empty()
            while conn.poll(None if idle else 0):
                try:
                    kind, jid, fields = conn.recv()
                except EOFError:  # the server is gone
                    return
                if kind == "stop":
                    return
                if kind == "cancel":
                    job = jobs.pop(jid, None)
                    if job is not None:
                        job.cancelled = True
                    continue
                job = _ChildJob(loop=outbox, jid=jid, **fields)  # type: ignore[arg-type]
                jobs[jid] = job
                scheduler._inbox.put(job)
                idle = False
            scheduler.turn()
