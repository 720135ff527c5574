"""POST /classify."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response

from app.deps import check_texts, unless_disconnected
from app.schemas import ClassifyRequest, LabelScore

router = APIRouter(tags=["inference"])


@router.post("/classify", response_model=list[list[LabelScore]])
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Label scores for each input, best first (all labels, or the best `top_k`)."""
    # The app's state is read directly: FastAPI dependencies cost ~50 us each per request.
    state = request.app.state
    texts = check_texts(body.inputs, state.settings)
    entry = state.registry.get(body.model, "classify")
    assert entry.classify is not None and entry.artifact is not None
    probs = await unless_disconnected(request, entry.classify.submit(texts))
    labels = entry.artifact.labels
    k = body.parameters.top_k or len(labels)
    answer = [[{"label": labels[i], "score": p[i]}
               for i in sorted(range(len(labels)), key=lambda i: -p[i])[:k]] for p in probs]
    # Built here and serialised once: the shape is the response model's, without
    # validating every label object again.
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json",
                    headers={"X-Model": entry.version})
