"""GET /models and GET /models/{name}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from app.deps import RegistryDep
from app.errors import ModelNotFound
from app.schemas import MODEL_NAME

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    """Every model folder: status (ready or failed with the reason), architecture, metrics."""
    return {"models": [e.info() for e in registry.entries.values()],
            "defaults": {"classification": registry.default_name("classification"),
                         "generation": registry.default_name("generation")}}


@router.get("/models/{name}")
async def get_model(registry: RegistryDep,
                    name: str = Path(pattern=MODEL_NAME)) -> dict[str, Any]:
    """One model."""
    entry = registry.entries.get(name)
    if entry is None:
        available = ", ".join(registry.entries) or "none"
        raise ModelNotFound(f"model '{name}' not found; available: {available}")
    return entry.info()
