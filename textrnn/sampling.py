"""Vectorised next-token choice with per-row parameters and per-row seeds.

Every row of a batch carries its own temperature, top-k, top-p, repetition penalty and seed.
Random numbers come from a counter-based hash of (seed, step), not from a shared generator,
so a row's choice depends only on its own logits, seed and position: the same request gives
the same text alone or batched with any others, and nothing loops over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RowParams", "apply_repetition_penalty", "choose_tokens", "uniform_from_seed"]

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x85EBCA6B) & _MASK32
    x = ((x ^ (x >> 13)) * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def uniform_from_seed(seeds: Tensor, steps: Tensor) -> Tensor:
    """One float in [0, 1) per row from its seed [B] and step [B] (both int64)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    h = _mix32(lo ^ _mix32(hi ^ _mix32(steps * 0x9E3779B1 + 0x632BE5AB)))
    return (h >> 8).to(torch.float64).div(1 << 24).to(torch.float32)


@dataclass
class RowParams:
    """Per-row sampling parameters as tensors of shape [B]."""

    temperature: Tensor  # float; 0 means greedy
    top_k: Tensor  # int64; 0 means off
    top_p: Tensor  # float; 1 means off
    repetition_penalty: Tensor  # float; 1 means off
    seed: Tensor  # int64

    def rows(self, index: Tensor) -> RowParams:
        """The parameters of the given rows."""
        return RowParams(*(t.index_select(0, index) for t in
                           (self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                            self.seed)))


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """CTRL-style penalty: seen tokens' positive logits divided, negative ones multiplied."""
    # Floored: a penalty that underflows to 0 in float32 would turn -inf logits into NaN.
    p = penalty[:, None].to(logits.dtype).clamp(min=1e-3)  # B 1
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def choose_tokens(logits: Tensor, params: RowParams, steps: Tensor,
                  seen: Tensor | None = None, banned: int | None = None) -> tuple[Tensor, Tensor]:
    """Pick one token per row; return (ids [B], model log-probabilities of those ids [B]).

    `seen` [B, V] marks tokens already in each row (for the repetition penalty); `banned`
    is a token id never produced (the unknown token). The log-probability is that of the
    model's own distribution, before any warping.
    """
    logits = logits.float()
    if banned is not None:
        logits[:, banned] = float("-inf")
    logprobs = torch.log_softmax(logits, dim=-1)  # B V
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        if banned is not None:
            logits[:, banned] = float("-inf")
    greedy = params.temperature <= 0
    # A tiny temperature would overflow the scaled logits into inf and NaN: floor it (at
    # 1e-3 sampling is already greedy for any real logit gap).
    temperature = torch.where(greedy, torch.ones_like(params.temperature),
                              params.temperature.clamp(min=1e-3))
    scaled = logits / temperature[:, None].to(logits.dtype)
    ordered, order = scaled.sort(dim=-1, descending=True)  # B V
    rank = torch.arange(ordered.size(1), device=ordered.device)[None, :]  # 1 V
    k = torch.where(params.top_k > 0, params.top_k, ordered.size(1))[:, None]
    ordered = ordered.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)  # B V, in sorted order
    before = probs.cumsum(-1) - probs  # mass strictly above each position
    ordered = ordered.masked_fill((before > params.top_p[:, None]) & (rank > 0), float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    cdf = probs.cumsum(-1)  # B V
    u = uniform_from_seed(params.seed, steps).to(cdf.device)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u).clamp_(max=cdf.size(1) - 1)  # B 1
    sampled = order.gather(1, pick)[:, 0]
    ids = torch.where(greedy, logits.argmax(-1), sampled)
    return ids, logprobs.gather(1, ids[:, None])[:, 0]
