"""POST /score."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request, Response

from app.deps import check_texts, tenant_of, unless_disconnected
from app.schemas import ScoreRequest, ScoreResult

router = APIRouter(tags=["inference"])


@router.post("/score", response_model=list[ScoreResult], response_model_exclude_unset=True)
async def score(body: ScoreRequest, request: Request) -> Response:
    """Log-probability, perplexity and bits per character of each text under a language model;
    with `parameters.details`, every token's log-probability too."""
    state = request.app.state
    texts = check_texts(body.inputs, state.settings)
    entry = state.registry.get(body.model, "score")
    assert entry.score is not None
    results = await unless_disconnected(request.receive, entry.score.submit(texts, tenant_of(request)))
    if body.parameters.details:
        # Up to one object per character of the budget: built in a thread, so that the event
        # loop goes on serving other clients meanwhile.
        payload = await asyncio.to_thread(_payload, texts, results, True)
    else:
        payload = _payload(texts, results, False)
    return Response(payload, media_type="application/json", headers={"X-Model": entry.version})


def _payload(texts: list[str], results: list[dict[str, Any]], details: bool) -> bytes:
    """The JSON answer, in ScoreResult's shape (`details` only when asked for)."""
    out = []
    for text, result in zip(texts, results, strict=True):
        totals = {k: v for k, v in result.items() if k not in ("encoding", "token_logprobs")}
        if details:
            totals["details"] = {"tokens": _tokens(text, result)}
        out.append(totals)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def _tokens(text: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The tokens of `text` with their log-probabilities; the first has none (no prefix)."""
    encoding = result["encoding"]
    logprobs: list[float | None] = [None, *result["token_logprobs"].tolist()][:len(encoding.ids)]
    return [{"id": i, "text": text[start:end], "logprob": lp}
            for i, (start, end), lp in zip(encoding.ids, encoding.offsets, logprobs, strict=True)]
