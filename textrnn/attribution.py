"""Why a classifier decided: each word's contribution to a label's log-probability, by
integrated gradients over the word embeddings or by occlusion (leaving each word out).

Integrated gradients (Sundararajan et al., 2017) sum to the difference between the text's
log-probability and a baseline's (completeness), so the words' shares add up to the decision;
the baseline is the all-zero embedding, which is this nets' padding vector. Occlusion asks the
served net the plainer question "and without this word?", whose answer may flip the label.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from textrnn.inference import classify_logits
from textrnn.memory import float_rnn
from textrnn.nets import RNNClassifier
from textrnn.pieces import Pieces, finish

__all__ = ["Attribution", "integrated_gradients", "integrated_gradients_pieces",
           "logits_from_embeddings", "occlusion", "occlusion_pieces"]

ROWS_PER_PASS = 64  # rows of one forward (and backward) pass: bounds the memory of long texts
PIECE_TOKENS = 2048  # rows x tokens of one pass of the `_pieces` forms, between two pauses


@dataclass(frozen=True)
class Attribution:
    """Each word's contribution [T] to `log_prob`, the label's log-probability for the text;
    `baseline` is the log-probability it is measured from (integrated gradients), and
    `without` [T] the label the net gives without each word (occlusion)."""

    words: Tensor
    log_prob: float
    baseline: float | None = None
    without: list[int] | None = None


def logits_from_embeddings(net: RNNClassifier, emb: Tensor) -> Tensor:
    """Logits [B, C] for embedded rows [B, T, E] of one length (no padding), as `net` gives
    for their ids, with the float32 weights; differentiable in `emb`."""
    rnn = float_rnn(net)
    out, state = rnn(emb)  # B T D*H
    pooling = net.config.pooling
    directions = 2 if net.config.bidirectional else 1
    h_n = state[0] if isinstance(state, tuple) else state  # L*D B H
    last = h_n[-directions:].transpose(0, 1).reshape(emb.size(0), -1)  # B D*H
    if pooling == "max":
        pooled = out.max(1).values
    elif pooling == "last":
        pooled = last
    elif pooling == "mean":
        pooled = out.mean(1)
    else:
        pooled = torch.cat([last, out.mean(1), out.max(1).values], dim=-1)  # B 3*D*H
    logits: Tensor = net.head(pooled)
    return logits


def _rows_per_pass(tokens: int) -> int:
    """Rows of `tokens` tokens in one pass of a computation in pieces."""
    return max(1, min(ROWS_PER_PASS, PIECE_TOKENS // max(1, tokens)))


def integrated_gradients(net: RNNClassifier, ids: list[int], label: int, steps: int) -> Attribution:
    """Integrated gradients of log p(label) from the zero embedding to the text's, by the
    midpoint rule with `steps` points; each word's share is summed over its embedding."""
    return finish(integrated_gradients_pieces(net, ids, label, steps, ROWS_PER_PASS))


def integrated_gradients_pieces(net: RNNClassifier, ids: list[int], label: int, steps: int,
                                rows: int = 0) -> Pieces[Attribution]:
    """`integrated_gradients` in pieces of `rows` points (by default as many as make a
    quarter of PIECE_TOKENS tokens), each piece one forward and backward pass."""
    device = net.head.weight.device
    rows = rows or _rows_per_pass(4 * len(ids))  # a backward pass costs about three forward
    # Gradients are needed here even when the caller runs in inference mode. Each piece
    # enters the modes itself: the thread may run other work in between.
    with _grad_modes():
        emb = net.embedding(torch.tensor(ids, device=device)).detach().float()  # T E
        alphas = (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps
        total = torch.zeros_like(emb)  # T E
    for k, chunk in enumerate(torch.split(alphas, rows)):
        if k:
            yield
        with _grad_modes():
            x = (chunk[:, None, None] * emb).requires_grad_()  # b T E
            logp = torch.log_softmax(logits_from_embeddings(net, x), dim=-1)[:, label]
            (grad,) = torch.autograd.grad(logp.sum(), x)
            total += grad.sum(0)
    with _grad_modes(), torch.no_grad():
        ends = torch.stack([emb, torch.zeros_like(emb)])  # 2 T E: the text, the baseline
        logp_ends = torch.log_softmax(logits_from_embeddings(net, ends), dim=-1)[:, label]
        words = (emb * total / steps).sum(-1)  # T
    return Attribution(words.detach().cpu(), float(logp_ends[0]), float(logp_ends[1]))


def _grad_modes() -> contextlib.ExitStack:
    """Gradients on, inference mode off, cuDNN off (its RNN backward refuses eval mode)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    stack.enter_context(torch.backends.cudnn.flags(enabled=False))
    return stack


def occlusion(net: RNNClassifier, ids: list[int], label: int) -> Attribution:
    """Each word's contribution as log p(label | text) - log p(label | text without the word),
    from the net's own forward pass (what /classify answers), with the label it gives then."""
    with torch.no_grad():
        return finish(occlusion_pieces(net, ids, label, ROWS_PER_PASS))


def occlusion_pieces(net: RNNClassifier, ids: list[int], label: int,
                     rows: int = 0) -> Pieces[Attribution]:
    """`occlusion` in pieces of `rows` texts (by default as many as make PIECE_TOKENS
    tokens), each piece one forward pass (run it without grad)."""
    rows = rows or _rows_per_pass(len(ids))
    texts = [ids, *(ids[:i] + ids[i + 1:] for i in range(len(ids)))]
    parts = []
    for k in range(0, len(texts), rows):
        if k:
            yield
        parts.append(torch.log_softmax(classify_logits(net, texts[k:k + rows]).float(), -1))
    logp = torch.cat(parts).cpu()  # 1+T C
    words = logp[0, label] - logp[1:, label]  # T
    return Attribution(words, float(logp[0, label]), without=logp[1:].argmax(-1).tolist())
