"""Bearer-key authentication for the model and admin routes (off when no key is set)."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import Unauthorized

__all__ = ["require_key"]


async def require_key(request: Request) -> None:
    """Pass when no keys are configured or the request carries one of them."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Compare against every key, in constant time, so timing tells nothing about any key.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")
