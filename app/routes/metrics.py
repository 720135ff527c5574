"""GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics import collecting_registry

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus metrics of the server: of this process, or of all its processes."""
    return Response(generate_latest(collecting_registry()), media_type=CONTENT_TYPE_LATEST)
