"""SIGHUP reloads the models folder, as `POST /admin/reload` does (the Unix convention of
nginx and gunicorn), so that an operator or an orchestrator reloads without any key or port.

The handler is installed on the event loop (`loop.add_signal_handler`): the signal only wakes
the loop, and the reload runs there as a task, like a request's. Signals reach the main thread
only, so a server run in another thread (a test's) gets no handler.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from fastapi import FastAPI

__all__ = ["install_sighup_reload"]

log = logging.getLogger("app")


async def _reload(app: FastAPI) -> None:
    """Wait for the start-up loading to end, then reload and log what changed."""
    while not app.state.loaded:
        await asyncio.sleep(0.1)
    try:
        report = await app.state.registry.reload()
    except Exception:
        log.exception("SIGHUP: reload failed; the models already served stay")
        return
    level = logging.WARNING if report["failed"] else logging.INFO
    log.log(level, "SIGHUP: reload done: loaded %s, kept %s, removed %s, failed %s",
            report["loaded"], report["kept"], report["removed"], report["failed"])


def install_sighup_reload(app: FastAPI) -> Callable[[], None]:
    """Reload the registry of `app` on each SIGHUP (from the running loop, in the main thread);
    returns the function that removes the handler and cancels a reload not yet done."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGHUP)
    tasks: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        if app.state.draining:
            log.info("SIGHUP: shutting down; no reload")
            return
        log.info("SIGHUP: reloading the models in %s", app.state.settings.models_dir)
        # Reloads run one after another (the registry's lock); each rescans the folder.
        task = loop.create_task(_reload(app))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        for task in tasks:
            task.cancel()

    return remove

