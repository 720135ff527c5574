"""GET /health/live and GET /health/ready."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "live"}


@router.get("/health/ready", responses={503: {"description": "Not ready"}})
async def ready(request: Request, registry: RegistryDep) -> JSONResponse:
    """200 once every model that loaded is warmed up and at least one serves; else 503."""
    state = request.app.state
    failed = {e.name: e.error for e in registry.failed()}
    body: dict[str, Any] = {"ready": [e.name for e in registry.ready()], "failed": failed}
    restarting = {e.name: e.generator.lost_reason for e in registry.ready()
                  if e.generator is not None and e.generator.restarting}
    if restarting:  # their scoring serves; their generation is refused (503) till it is back
        body["restarting"] = restarting
    if state.draining:
        return JSONResponse(body | {"status": "draining"}, status_code=503)
    if not state.loaded or not registry.ready():
        return JSONResponse(body | {"status": "not ready"}, status_code=503)
    return JSONResponse(body | {"status": "ready"})
