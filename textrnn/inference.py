"""Batched forward passes shared by the service and the training reports."""

from __future__ import annotations

import torch
from torch import Tensor

from textrnn.nets import CharLM, RNNClassifier

__all__ = ["classify_logits", "pad_batch", "sequence_logprobs", "token_logprobs"]


def pad_batch(seqs: list[list[int]], device: torch.device | str = "cpu",
              pad: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded ids [B, T] and lengths [B] (every length at least 1)."""
    width = max(1, max((len(s) for s in seqs), default=1))
    lengths = torch.tensor([max(1, len(s)) for s in seqs], dtype=torch.long)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)  # B T
    return ids.to(device), lengths


def classify_logits(net: RNNClassifier, seqs: list[list[int]], unk: int = 1) -> Tensor:
    """Logits [B, C] for token-id lists; an empty list reads as one unknown word."""
    device = net.head.weight.device
    ids, lengths = pad_batch([s or [unk] for s in seqs], device)
    logits: Tensor = net(ids, lengths)
    return logits


def sequence_logprobs(net: CharLM, seqs: list[list[int]]) -> Tensor:
    """Sum over each sequence of log p(token_t | tokens_<t) for t >= 1, as a [B] tensor.

    Padding goes after the text, and the net reads left to right, so it never changes a row.
    """
    device = net.head.weight.device
    ids, lengths = pad_batch(seqs, device)
    if ids.size(1) < 2:
        return torch.zeros(len(seqs), device=device)
    logits, _ = net(ids[:, :-1])  # B T-1 V
    logp = torch.log_softmax(logits.float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]  # B T-1
    mask = torch.arange(ids.size(1) - 1, device=device)[None, :] < (lengths.to(device) - 1)[:, None]
    return (logp * mask).sum(1)


def token_logprobs(net: CharLM, seqs: list[list[int]]) -> list[list[float]]:
    """Each sequence's log p(token_t | tokens_<t) for t >= 1, as lists (one shorter than
    their sequences): the per-token terms that `sequence_logprobs` sums."""
    device = net.head.weight.device
    ids, _ = pad_batch(seqs, device)
    if ids.size(1) < 2:
        return [[] for _ in seqs]
    logits, _ = net(ids[:, :-1])  # B T-1 V
    logp = torch.log_softmax(logits.float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]  # B T-1
    rows: list[list[float]] = logp.cpu().tolist()
    return [row[:max(0, len(seq) - 1)] for row, seq in zip(rows, seqs, strict=True)]
