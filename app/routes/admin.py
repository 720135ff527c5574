"""POST /admin/reload, served only when admin keys are configured (RNN_ADMIN_KEYS)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.deps import RegistryDep
from app.errors import Forbidden
from app.keys import ADMIN_PREFIX, ADMIN_SCOPE_KEY


async def _admin_key_checked(request: Request) -> None:
    # The middleware checks the admin key and marks the request. One that reaches an admin
    # route unmarked came by a path the middleware did not take for an admin one: refused.
    if not request.scope.get(ADMIN_SCOPE_KEY):
        raise Forbidden("the admin routes need a key from RNN_ADMIN_KEYS")


router = APIRouter(prefix=ADMIN_PREFIX, tags=["admin"], dependencies=[Depends(_admin_key_checked)])


@router.post("/reload")
async def reload(registry: RegistryDep) -> dict[str, list[str]]:
    """Rescan the models folder; new and changed models are swapped in, removed ones retired
    after their in-flight work. Answers which were loaded, kept, removed and failed."""
    return await registry.reload()
