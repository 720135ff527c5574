"""POST /admin/reload."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import RegistryDep

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload")
async def reload(registry: RegistryDep) -> dict[str, list[str]]:
    """Rescan the models folder; new and changed models are swapped in, removed ones retired
    after their in-flight work. Answers which were loaded, kept, removed and failed."""
    return await registry.reload()
