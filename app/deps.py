"""Dependencies shared by the routes, as typed `Annotated` aliases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from starlette.types import Receive

from app.errors import ClientGone, InvalidInput
from app.keys import TENANT_SCOPE_KEY
from app.limits import check_chars, request_chars
from app.registry import Registry
from app.settings import Settings

__all__ = ["RegistryDep", "SettingsDep", "check_texts", "tenant_of",
           "unless_disconnected"]

T = TypeVar("T")


async def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def check_texts(inputs: str | list[str], settings: Settings, field: str = "inputs") -> list[str]:
    """The texts of a request as a list, within the configured count and length limits."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise InvalidInput(f"{field} must hold at least one text")
    if len(texts) > settings.max_inputs:
        raise InvalidInput(f"{field} holds {len(texts)} texts; the limit is {settings.max_inputs} "
                           "(RNN_MAX_INPUTS)")
    for i, text in enumerate(texts):
        check_chars(text, settings, field if isinstance(inputs, str) else f"{field}[{i}]")
    request_chars(settings, texts, field)
    return texts


def tenant_of(request: Request) -> str:
    """Who sent the request, for sharing the engine fairly: a digest of its API key, or ""
    when the service takes no keys."""
    return str(request.scope.get(TENANT_SCOPE_KEY, ""))


async def _disconnected(receive: Receive) -> None:
    # The body has been read: the next message the server sends is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T],
                              on_disconnect: Callable[[], None] | None = None) -> T:
    """Await `work`, giving it up the moment the client goes away (its queued work is
    dropped, a generation is cancelled). A future (the batcher's) is awaited as it is."""
    future = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))

    def gone(w: asyncio.Future[None]) -> None:
        if not w.cancelled() and not future.done():
            future.cancel()

    watcher.add_done_callback(gone)
    try:
        return await future
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            if on_disconnect is not None:
                on_disconnect()
            raise ClientGone("the client disconnected") from None
        raise
    finally:
        watcher.remove_done_callback(gone)
        watcher.cancel()
