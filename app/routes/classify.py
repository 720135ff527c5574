"""POST /classify."""

from __future__ import annotations

import json
from typing import Any

import torch
from fastapi import APIRouter, Request, Response
from starlette.types import Receive

from app.deps import check_texts, tenant_of, unless_disconnected
from app.schemas import ClassifyRequest, LabelScore

__all__ = ["answer", "router"]

router = APIRouter(tags=["inference"])


async def answer(state: Any, body: ClassifyRequest, receive: Receive,
                 sender: str) -> tuple[bytes, str]:
    """The JSON answer to a valid request from `sender` and the model version that gave it
    (shared by the route below and the fast path in app.fastpath)."""
    texts = check_texts(body.inputs, state.settings)
    entry = state.registry.get(body.model, "classify")
    assert entry.classify is not None and entry.artifact is not None
    logits = await unless_disconnected(receive, entry.classify.submit(texts, sender))
    probs = _apply(body.parameters.function_to_apply or "softmax", logits)
    labels = entry.artifact.labels
    k = body.parameters.top_k or len(labels)
    scores = [[{"label": labels[i], "score": p[i]}
               for i in sorted(range(len(labels)), key=lambda i: -p[i])[:k]] for p in probs]
    # Built here and serialised once: the shape is the response model's, without
    # validating every label object again.
    return json.dumps(scores, separators=(",", ":")).encode(), entry.version


def _apply(function: str, logits: list[list[float]]) -> list[list[float]]:
    """Hugging Face text-classification's function_to_apply on rows of logits (in float32,
    as the model computes)."""
    if function == "none":
        return logits
    values = torch.tensor(logits, dtype=torch.float32)  # B C
    out = torch.sigmoid(values) if function == "sigmoid" else torch.softmax(values, dim=-1)
    result: list[list[float]] = out.tolist()
    return result


@router.post("/classify", response_model=list[list[LabelScore]])
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Label scores for each input, best first (all labels, or the best `top_k`)."""
    payload, version = await answer(request.app.state, body, request.receive, tenant_of(request))
    return Response(payload, media_type="application/json", headers={"X-Model": version})
