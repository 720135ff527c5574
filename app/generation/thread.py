"""The thread transport: the engine runs in a thread of the server (the GPU's choice, where
a worker process could not share the CUDA context)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

from app.generation.engine import Engine
from app.generation.messages import Command, StepWrapper, Turn, drive

__all__ = ["ThreadTransport"]

log = logging.getLogger(__name__)


class ThreadTransport:
    """Runs `make_engine()`'s engine in a thread; turns come back on the event loop."""

    def __init__(self, name: str, make_engine: Callable[[StepWrapper | None], Engine],
                 hold_s: float = 0.0) -> None:
        self.name, self.make_engine, self.hold_s = name, make_engine, hold_s
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self, on_turn: Callable[[Turn], None], on_lost: Callable[[str], None],
                    wrap_step: StepWrapper | None = None) -> None:
        """Start the engine's thread."""
        loop = asyncio.get_running_loop()
        engine = self.make_engine(wrap_step)
        inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()

        def emit(turn: Turn) -> None:
            loop.call_soon_threadsafe(on_turn, turn)

        def run() -> None:
            try:
                drive(engine, lambda block: _take(inbox, block), emit, self.hold_s)
            except BaseException as exc:  # not a step's failure: the engine handles those
                log.exception("generation thread of model %s failed", self.name)
                if not loop.is_closed():
                    loop.call_soon_threadsafe(on_lost, f"{type(exc).__name__}: {exc}")

        self._inbox = inbox
        self._thread = threading.Thread(target=run, name=f"generate-{self.name}", daemon=True)
        self._thread.start()

    def send(self, command: Command) -> None:
        """Hand the engine a command (from any thread)."""
        self._inbox.put(command)

    async def stop(self) -> None:
        """Stop the thread after its current turn and wait for it (off the event loop)."""
        thread = self._thread
        if thread is None:
            return
        self._inbox.put(None)
        await asyncio.to_thread(thread.join, 10)
        self._thread = None


def _take(inbox: queue.SimpleQueue[Command | None], block: bool) -> list[Command] | None:
    """Every command waiting (at least one when `block`); None once told to stop."""
    commands: list[Command] = []
    try:
        item = inbox.get(block=block)
        while True:
            if item is None:
                return None
            commands.append(item)
            item = inbox.get_nowait()
    except queue.Empty:
        return commands
