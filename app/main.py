"""The FastAPI application: `create_app(settings)` and the module-level `app`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.errors import install_error_handlers
from app.fastpath import install_classify_fast_path
from app.guard import RequestGuard
from app.logs import configure_logging
from app.middleware import ServiceMiddleware
from app.openapi import install_openapi
from app.registry import Registry, resolve_device
from app.routes import admin, classify, generate, health, metrics, models, score, tgi
from app.routes import openai as openai_routes
from app.routes.docs import install_docs
from app.routes.inside import install_inside
from app.routes.playground import install_playground
from app.settings import Settings, load_settings
from app.sighup import install_sighup_reload

__all__ = ["app", "create_app"]

log = logging.getLogger("app")


def _drain_on_signals(app: FastAPI) -> None:
    """On SIGTERM or SIGINT, turn not-ready and refuse new work at once, then run uvicorn's
    graceful shutdown (in-flight requests and streams finish) and exit 0. A second SIGINT
    (Ctrl-C twice) goes to uvicorn's own handler, which stops without waiting."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (a server run inside a test thread)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _drainer(app, signal.getsignal(signum)))


def _drainer(app: FastAPI, previous: Any) -> Callable[[int, FrameType | None], None]:
    server = getattr(previous, "__self__", None)  # uvicorn's Server, whose handler this is

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if app.state.draining and signum == signal.SIGINT and callable(previous):
            log.info("%s again: stopping without waiting", name)
            previous(signum, frame)
            return
        app.state.draining = True
        log.info("%s: draining; new requests get 503", name)
        if server is not None and hasattr(server, "should_exit"):
            # Ask uvicorn for its graceful shutdown directly: handing it the signal would make
            # it re-raise the signal at the end, and a finished drain should exit 0.
            server.should_exit = True
        elif callable(previous):
            previous(signum, frame)
    return on_signal


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; settings default to those of the environment."""
    settings = settings or load_settings()
    configure_logging(settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.threads)
        # The inference threads take the GIL between torch ops, dozens of times per batch or
        # step; at Python's default 5 ms a burst of answers on the event loop stalls them.
        sys.setswitchinterval(settings.gil_switch_ms / 1000)
        # The tokenizer's own thread pool splits a batch of a few dozen short texts over the
        # cores, where the event loop needs them: the inference thread then spent 16% of a
        # batch off the CPU, against 8% without it (64 clients, 2 cores). An explicit setting
        # in the environment wins.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Before loading: a SIGHUP during start-up waits for the load, and never kills us.
        remove_sighup = install_sighup_reload(app)
        registry = Registry(settings, resolve_device(settings.device))
        app.state.registry = registry
        # Loading runs in a thread so /health/live answers while models load.
        await asyncio.to_thread(registry.load_all)
        await registry.start()
        app.state.loaded = True
        _drain_on_signals(app)
        log.info("ready: %s; failed: %s", [e.name for e in registry.ready()],
                 [e.name for e in registry.failed()])
        try:
            yield
        finally:
            app.state.draining = True
            remove_sighup()
            await registry.stop()

    # FastAPI's own OpenTelemetry hooks are off: the service has its Prometheus metrics, and
    # the hooks' per-request checks cost event-loop time on every request.
    app = FastAPI(title="textrnn", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False,
                             "operation_spans": False},
                  description="Recurrent text models (RNN, LSTM, GRU): sentiment classification, "
                              "character-level generation and scoring, with batching.")
    app.state.settings = settings
    app.state.registry = Registry(settings, torch.device("cpu"))
    app.state.loaded = False
    app.state.draining = False
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    # Keys and draining are checked by the middleware (see is_public for what is exempt).
    app.add_middleware(RequestGuard, body_timeout_s=settings.body_timeout_s)  # and above it
    app.add_middleware(ServiceMiddleware, settings=settings, state=app.state)
    for module in (classify, generate, score, models, admin, metrics, health):
        if module is not admin or settings.admin_keys:  # no admin keys: no admin routes (404)
            app.include_router(module.router)
    app.include_router(tgi.router)
    app.include_router(openai_routes.router)
    install_classify_fast_path(app)  # after the FastAPI route it stands in for
    install_docs(app)
    install_playground(app)
    install_openapi(app, settings)
    install_inside(app, settings)  # after install_openapi: completes its document
    return app


app = create_app()
