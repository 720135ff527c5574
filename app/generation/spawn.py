"""Worker processes' start and end: the fork server that starts them, deaf to the signals a
process manager sends the whole group, and reaping a worker without blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.forkserver
import signal
from multiprocessing import resource_tracker
from typing import Any

__all__ = ["reap", "start_fork_server"]

log = logging.getLogger(__name__)


async def reap(process: Any, wait_s: float) -> None:
    """Wait (off the event loop) up to `wait_s` for a worker to exit, then kill it."""
    if process is None:
        return
    await asyncio.to_thread(process.join, wait_s)
    if process.exitcode is None:  # stuck: it had its chance
        log.warning("generation worker %d did not stop in %g s; killing it", process.pid, wait_s)
        process.kill()
        await asyncio.to_thread(process.join, 5)


def start_fork_server() -> None:
    """Start multiprocessing's fork server and its resource tracker deaf to the signals a
    process manager or a terminal sends the whole group (SIGINT, SIGTERM, SIGHUP). Both are
    spawned with those signals blocked, a mask a process keeps across fork and exec: the
    resource tracker then ignores SIGINT and SIGTERM, the fork server SIGINT, and the rest
    stay blocked, pending for good; a worker ignores them all itself. Both end when the
    server does. Blocking, unlike ignoring, loses nothing in this process: a signal that
    arrives meanwhile is handled once the mask is restored."""
    group = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, group)
    try:
        # Starting the resource tracker unblocks SIGINT and SIGTERM when done: block again.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, group)
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
