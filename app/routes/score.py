"""POST /score."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.deps import check_texts, unless_disconnected
from app.schemas import ScoreRequest, ScoreResult

router = APIRouter(tags=["inference"])


@router.post("/score", response_model=list[ScoreResult])
async def score(body: ScoreRequest, request: Request, response: Response) -> list[ScoreResult]:
    """Log-probability, perplexity and bits per character of each text under a language model."""
    state = request.app.state
    texts = check_texts(body.inputs, state.settings)
    entry = state.registry.get(body.model, "score")
    assert entry.score is not None
    results = await unless_disconnected(request.receive, entry.score.submit(texts))
    response.headers["X-Model"] = entry.version
    return [ScoreResult(**r) for r in results]
