"""POST /score."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.deps import check_texts, unless_disconnected
from app.schemas import PrefillToken, ScoreDetails, ScoreRequest, ScoreResult

router = APIRouter(tags=["inference"])


# Unset fields are left out: `details` appears only when asked for, so answers without it
# stay as they were.
@router.post("/score", response_model=list[ScoreResult], response_model_exclude_unset=True)
async def score(body: ScoreRequest, request: Request, response: Response) -> list[ScoreResult]:
    """Log-probability, perplexity and bits per character of each text under a language model;
    with `parameters.details`, every token's log-probability too."""
    state = request.app.state
    texts = check_texts(body.inputs, state.settings)
    entry = state.registry.get(body.model, "score")
    assert entry.score is not None
    results = await unless_disconnected(request.receive, entry.score.submit(texts))
    response.headers["X-Model"] = entry.version
    out = []
    for text, result in zip(texts, results, strict=True):
        totals = {k: v for k, v in result.items() if k not in ("encoding", "token_logprobs")}
        if body.parameters.details:
            totals["details"] = _details(text, result)
        out.append(ScoreResult(**totals))
    return out


def _details(text: str, result: dict[str, Any]) -> ScoreDetails:
    """The tokens of `text` with their log-probabilities; the first has none (no prefix)."""
    encoding = result["encoding"]
    logprobs: list[float | None] = [None, *result["token_logprobs"].tolist()][:len(encoding.ids)]
    return ScoreDetails(tokens=[PrefillToken(id=i, text=text[start:end], logprob=lp)
                                for i, (start, end), lp in zip(encoding.ids, encoding.offsets,
                                                               logprobs, strict=True)])
