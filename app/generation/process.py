"""The worker-process transport: the engine runs in a process of its own (the CPU default).

A thread of the server shares the GIL with the event loop, and a step's two dozen small
tensor operations each hand it back and forth. In a worker process neither waits for the
other. The worker is started by multiprocessing's fork server, a clean single-threaded
process that has imported torch once, never forked from the multi-threaded server. It loads
the model folder itself (and checks it is the server's version), ignores SIGINT and SIGTERM,
which a process manager or a terminal sends to the whole process group, and ends when the
server tells it to or goes away (its socket closes), so a signal to the group lets the
streams in flight finish. Messages are length-prefixed pickles on two socket pairs; the
server's ends are non-blocking and served by the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import socket
from collections.abc import Callable
from typing import Any

from app.generation.messages import Command, StepWrapper, Turn
from app.generation.spawn import reap, start_fork_server
from app.generation.worker import HEADER, WorkerSetup, frames, run_worker

__all__ = ["ProcessTransport"]

log = logging.getLogger(__name__)


class ProcessTransport:
    """Runs the engine in a worker process; turns come back on the event loop."""

    def __init__(self, name: str, setup: WorkerSetup) -> None:
        self.name, self.setup = name, setup
        self.pid = 0
        self._process: Any = None
        self._down: socket.socket | None = None  # commands to the worker, buffered in _out
        self._up: socket.socket | None = None  # turns from the worker, parsed from _in
        self._out, self._in = bytearray(), bytearray()
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_turn: Callable[[Turn], None] = lambda turn: None
        self._on_lost: Callable[[str], None] = lambda why: None
        self._ready: asyncio.Future[None] | None = None
        self._reaping: asyncio.Task[None] | None = None  # a dead worker's, kept till it ends

    async def start(self, on_turn: Callable[[Turn], None], on_lost: Callable[[str], None],
                    wrap_step: StepWrapper | None = None) -> None:
        """Start a worker and wait until it has loaded the model."""
        loop = self._loop = asyncio.get_running_loop()
        self._on_turn, self._on_lost = on_turn, on_lost
        down, down_child = socket.socketpair()
        up, up_child = socket.socketpair()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["app.generation.worker"])
        start_fork_server()
        process = context.Process(target=run_worker, name=f"generate-{self.name}",
                                  args=(self.setup, wrap_step, down_child, up_child))
        await asyncio.to_thread(process.start)  # waits for the fork server to take the job
        down_child.close()
        up_child.close()
        down.setblocking(False)
        up.setblocking(False)
        self._process, self.pid = process, process.pid or 0
        self._down, self._up, self._out, self._in, self._writing = down, up, bytearray(), bytearray(), False
        self._ready = loop.create_future()
        loop.add_reader(up.fileno(), self._readable)
        await self._ready
        log.info("generation worker for model %s started (pid %d)", self.name, self.pid)

    def send(self, command: Command | None) -> None:
        """Queue a command for the worker (on the event loop); None tells it to stop."""
        if self._down is None:
            return
        data = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        self._out += HEADER.pack(len(data)) + data
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
            except OSError:  # the worker is gone: the reader sees it and reports it lost
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
        """The worker's messages (on the event loop)."""
        up = self._up
        assert up is not None
        try:
            while chunk := up.recv(1 << 16):
                self._in += chunk
        except BlockingIOError:
            chunk = b"..."  # not the end: what there was has been read
        except OSError:
            chunk = b""
        for message in frames(self._in):
            if isinstance(message, Turn):
                self._on_turn(message)
            elif self._ready is not None and not self._ready.done():  # ("ready", pid) or an error
                if message[0] == "ready":
                    self._ready.set_result(None)
                else:
                    self._ready.set_exception(RuntimeError(message[1]))
        if not chunk:
            self._close()
            dead, self._process = self._process, None  # a replacement may start meanwhile
            self._reaping = asyncio.get_running_loop().create_task(reap(dead, 5.0))
            ready = self._ready
            if ready is not None and not ready.done():
                ready.set_exception(RuntimeError("the generation worker exited at start"))
            elif ready is None or ready.cancelled() or ready.exception() is None:
                self._on_lost(f"worker {self.pid} exited")
            # else: it reported why it could not start, and exits; the start has failed with
            # that reason, which the restart reports (not a loss of a running worker)

    async def stop(self) -> None:
        """Tell the worker to stop after its current turn, and wait for it (off the loop)."""
        if self._down is None and self._process is None:
            return
        self.send(None)
        self._close()
        process, self._process = self._process, None
        await reap(process, 10.0)

    def _close(self) -> None:
        loop = self._loop
        if loop is not None and self._up is not None:
            loop.remove_reader(self._up.fileno())
            self._up.close()
        if loop is not None and self._down is not None:
            if self._writing:
                loop.remove_writer(self._down.fileno())
            self._down.close()
        self._up = self._down = None
        self._writing = False
