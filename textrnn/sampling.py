"""Vectorised next-token choice with per-row parameters and per-row seeds.

Every row of a batch carries its own temperature, top-k, top-p, typical-p, repetition,
frequency and presence penalties and seed.
Random numbers come from a counter-based hash of (seed, step), not from a shared generator,
so a row's choice depends only on its own logits, seed and position: the same request gives
the same text alone or batched with any others, and nothing loops over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import torch
from torch import Tensor

__all__ = [
    "RowParams",
    "Uses",
    "apply_additive_penalties",
    "apply_repetition_penalty",
    "choose_tokens",
    "top_alternatives",
    "typical_mask",
    "uniform_from_seed",
    "uniform_table",
]

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
    """Per-row sampling parameters as tensors of shape [B].

    Made once per set of rows (when the running batch changes), not per step: what is
    derived from them (which warps any row uses, the effective temperatures) is cached here,
    so that a step runs only the tensor operations its rows need. On the CPU each operation
    also costs a round trip of the GIL, which a server's other threads are waiting for.
    """

    temperature: Tensor  # float; 0 means greedy
    top_k: Tensor  # int64; 0 means off
    top_p: Tensor  # float; 1 means off
    repetition_penalty: Tensor  # float; 1 means off
    seed: Tensor  # int64
    # Optional columns: None means "off" in every row, so older callers need not build them.
    typical_p: Tensor | None = None  # float; 1 means off
    frequency_penalty: Tensor | None = None  # float; 0 means off (subtracted per occurrence)
    presence_penalty: Tensor | None = None  # float; 0 means off (subtracted once if present)

    def _fields(self) -> tuple[Tensor, ...]:
        n = self.seed.size(0)
        like = self.temperature
        return (self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.seed,
                _or_full(self.typical_p, n, 1.0, like), _or_full(self.frequency_penalty, n, 0.0, like),
                _or_full(self.presence_penalty, n, 0.0, like))

    def rows(self, index: Tensor) -> RowParams:
        """The parameters of the given rows."""
        picked = [None if t is None else t.index_select(0, index)
                  for t in (self.typical_p, self.frequency_penalty, self.presence_penalty)]
        return RowParams(*(t.index_select(0, index) for t in self._fields()[:5]), *picked)

    @staticmethod
    def cat(parts: list[RowParams]) -> RowParams:
        """The rows of several parameter sets, in order."""
        columns = [torch.cat(column) for column in zip(*(p._fields() for p in parts), strict=True)]
        optional = [None if all(getattr(p, name) is None for p in parts) else column
                    for name, column in zip(("typical_p", "frequency_penalty", "presence_penalty"),
                                            columns[5:], strict=True)]
        return RowParams(*columns[:5], *optional)

    @cached_property
    def uses(self) -> Uses:
        """Which warps any row uses; the others are skipped."""
        return Uses(greedy=bool((self.temperature <= 0).any()), top_k=bool((self.top_k > 0).any()),
                    top_p=bool((self.top_p < 1).any()),
                    penalty=bool((self.repetition_penalty != 1).any()),
                    typical=self.typical_p is not None and bool((self.typical_p < 1).any()),
                    additive=any(t is not None and bool((t != 0).any())
                                 for t in (self.frequency_penalty, self.presence_penalty)))

    @cached_property
    def divisor(self) -> Tensor:
        """[B, 1] temperatures to divide the logits by: greedy rows' 1, and a floor of 1e-3,
        since a tiny temperature would overflow the scaled logits into inf and NaN (at 1e-3
        sampling is already greedy for any real logit gap)."""
        floored = self.temperature.clamp(min=1e-3)
        if self.uses.greedy:
            floored = torch.where(self.temperature <= 0, torch.ones_like(floored), floored)
        return floored[:, None].float()

    @cached_property
    def top_k_column(self) -> Tensor:
        """[B, 1] top-k, with "off" as a rank no vocabulary reaches."""
        return torch.where(self.top_k > 0, self.top_k, 2**62)[:, None]


def _or_full(column: Tensor | None, n: int, value: float, like: Tensor) -> Tensor:
    return column if column is not None else torch.full((n,), value, dtype=like.dtype,
                                                        device=like.device)


@dataclass(frozen=True)
class Uses:
    """Whether any row of a batch is greedy, or uses top-k, top-p, typical-p, the repetition
    penalty or the additive (frequency, presence) penalties."""

    greedy: bool
    top_k: bool
    top_p: bool
    penalty: bool
    typical: bool = False
    additive: bool = False


def uniform_table(seeds: Tensor, steps: int) -> Tensor:
    """[B, steps]: row i holds `uniform_from_seed(seeds[i], t)` for t = 0 .. steps - 1, so a
    generation's random numbers can be drawn once, when it starts."""
    rows = seeds.size(0)
    grid = torch.arange(steps, dtype=torch.long, device=seeds.device).repeat(rows)
    return uniform_from_seed(seeds.repeat_interleave(steps), grid).view(rows, steps)


def apply_additive_penalties(logits: Tensor, counts: Tensor, frequency: Tensor | None,
                             presence: Tensor | None) -> Tensor:
    """OpenAI's penalties: each token's logit minus `frequency` times its count [B, V] so far,
    minus `presence` once if it occurred at all."""
    out = logits
    if frequency is not None:
        out = out - frequency[:, None].to(logits.dtype) * counts.to(logits.dtype)
    if presence is not None:
        out = out - presence[:, None].to(logits.dtype) * (counts > 0).to(logits.dtype)
    return out


def typical_mask(ordered: Tensor, typical_p: Tensor) -> Tensor:
    """Locally typical sampling (Meister et al., 2022) on logits [B, V]: True where a token
    falls outside the smallest set, taken by closeness of its surprisal to the entropy, whose
    mass reaches `typical_p` [B]. A row at 1 keeps every token; each row keeps at least one."""
    logp = torch.log_softmax(ordered, dim=-1)  # B V
    probs = logp.exp()
    # -inf logits give 0 * -inf = NaN in the entropy: those terms are 0.
    entropy = -torch.where(probs > 0, probs * logp, torch.zeros_like(probs)).sum(-1, keepdim=True)
    distance = (-logp - entropy).abs().masked_fill(probs == 0, float("inf"))  # B V
    closest, order = distance.sort(dim=-1, stable=True)
    mass = probs.gather(1, order)
    before = mass.cumsum(-1) - mass  # mass of the closer tokens
    drop_sorted = (before >= typical_p[:, None]) & (torch.arange(mass.size(1), device=mass.device) > 0)
    drop_sorted |= closest.isinf() & (typical_p[:, None] < 1)
    drop_sorted &= typical_p[:, None] < 1
    return torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)


def top_alternatives(logprobs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The `n` likeliest tokens of each row of log-probabilities [B, V]: (ids [B, n],
    log-probabilities [B, n]), best first; ties go to the lower id, so a row's answer does
    not depend on its batch."""
    n = min(n, logprobs.size(1))
    # A stable sort keeps ties in id order; topk's tie order is unspecified.
    values, ids = logprobs.sort(dim=-1, descending=True, stable=True)
    return ids[:, :n], values[:, :n]


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """CTRL-style penalty: seen tokens' positive logits divided, negative ones multiplied."""
    # Floored: a penalty that underflows to 0 in float32 would turn -inf logits into NaN.
    p = penalty[:, None].to(logits.dtype).clamp(min=1e-3)  # B 1
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


@cache
def _ranks(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Positions 0 .. size - 1 as a [1, size] row, and which of them are past the first."""
    with torch.inference_mode(False):  # kept across calls: an ordinary tensor, usable anywhere
        rank = torch.arange(size, device=device)[None, :]
        return rank, rank > 0


def choose_tokens(logits: Tensor, params: RowParams, steps: Tensor | None,
                  seen: Tensor | None = None, banned: int | None = None,
                  uniforms: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pick one token per row; return (ids [B], model log-probabilities of those ids [B]).

    Each row's random number is `uniform_from_seed(seed, step)` for its `steps` entry, or its
    entry of `uniforms` [B] when given (drawn ahead by `uniform_table`; the same numbers).
    `seen` [B, V] counts each token's occurrences so far in each row (a boolean mask reads
    as counts of 0 and 1), for the repetition, frequency and presence penalties; `banned`
    is a token id never produced (the unknown token). The log-probability is that of the
    model's own distribution, before any warping. Warps no row uses are skipped. The order
    is TGI's: penalties, temperature, top-k, top-p, typical-p.
    """
    uses = params.uses
    logits = logits.float()
    if banned is not None:
        logits[:, banned] = float("-inf")
    logprobs = torch.log_softmax(logits, dim=-1)  # B V
    if seen is not None and (uses.penalty or uses.additive):
        if uses.penalty:
            logits = apply_repetition_penalty(logits, seen > 0, params.repetition_penalty)
        if uses.additive:
            logits = apply_additive_penalties(logits, seen, params.frequency_penalty,
                                              params.presence_penalty)
        if banned is not None:
            logits[:, banned] = float("-inf")
    scaled = logits / params.divisor
    ordered, order = scaled.sort(dim=-1, descending=True)  # B V
    rank, past_first = _ranks(ordered.size(1), ordered.device)
    if uses.top_k:
        ordered = ordered.masked_fill(rank >= params.top_k_column, float("-inf"))
    probs = torch.softmax(ordered, dim=-1)  # B V, in sorted order
    if uses.top_p:
        before = probs.cumsum(-1) - probs  # mass strictly above each position
        ordered = ordered.masked_fill((before > params.top_p[:, None]) & past_first, float("-inf"))
        probs = torch.softmax(ordered, dim=-1)
    if uses.typical:
        assert params.typical_p is not None
        ordered = ordered.masked_fill(typical_mask(ordered, params.typical_p), float("-inf"))
        probs = torch.softmax(ordered, dim=-1)
    cdf = probs.cumsum(-1)  # B V
    if uniforms is None:
        assert steps is not None, "choose_tokens needs steps or uniforms"
        uniforms = uniform_from_seed(params.seed, steps)
    u = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u).clamp_(max=cdf.size(1) - 1)  # B 1
    ids = order.gather(1, pick)[:, 0]
    if uses.greedy:
        ids = torch.where(params.temperature <= 0, logits.argmax(-1), ids)
    return ids, logprobs.gather(1, ids[:, None])[:, 0]
