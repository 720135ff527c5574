"""The batch functions a loaded model folder serves with: classify, score, warm up.

Each runs a whole batch of texts on the model's inference thread (grad mode is per thread, so
`torch.inference_mode()` is entered inside each)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from textrnn.artifact import Artifact
from textrnn.inference import classify_logits, token_logprobs
from textrnn.nets import CharLM, RNNClassifier
from textrnn.tokenization import encode_batch

__all__ = ["classify_batch", "score_batch", "warm_up"]


def warm_up(artifact: Artifact, device: torch.device) -> None:
    """Run the model once, so that the first request does not pay for lazy set-up."""
    with torch.inference_mode():
        if isinstance(artifact.net, RNNClassifier):
            classify_batch(artifact)(["warm up", "a b c"])
        else:
            score_batch(artifact)(["warm up", "abc"])
            net = artifact.net
            net.step(torch.zeros(2, dtype=torch.long, device=device), net.initial_state(2, device))


def classify_batch(artifact: Artifact) -> Callable[[list[str]], list[list[float]]]:
    """The batch function of a classifier: texts to each label's logit."""
    net = artifact.net
    assert isinstance(net, RNNClassifier)
    max_length = artifact.config.get("max_length") or 10**9

    def run(texts: list[str]) -> list[list[float]]:
        with torch.inference_mode():
            seqs = [s[:max_length] for s in encode_batch(artifact.tokenizer, texts)]
            # Raw logits: the route applies softmax, sigmoid or nothing (function_to_apply).
            logits = classify_logits(net, seqs).float()  # B C
            result: list[list[float]] = logits.cpu().tolist()
            return result
    return run


def score_batch(artifact: Artifact) -> Callable[[list[str]], list[dict[str, Any]]]:
    """The batch function of a language model: texts to their scores (and, when asked, each
    token's logprob)."""
    net = artifact.net
    assert isinstance(net, CharLM)

    def run(texts: list[str]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            encodings = artifact.tokenizer.encode_batch(texts, add_special_tokens=False)
            seqs = [e.ids for e in encodings]
            logp = token_logprobs(net, seqs)  # B T-1
            sums = logp.sum(1).cpu().tolist()  # summed where it was computed: totals unchanged
            logp = logp.cpu()
        out = []
        for i, (seq, total) in enumerate(zip(seqs, sums, strict=True)):
            n = len(seq) - 1
            # Per-token values ride along unconverted (a view, an Encoding): only a request
            # that asks for details pays for turning them into lists.
            row = {"encoding": encodings[i], "token_logprobs": logp[i, :max(n, 0)]}
            if n < 1:
                out.append(row | {"tokens": 0, "log_prob": 0.0, "perplexity": None,
                                  "bits_per_char": None})
                continue
            out.append(row | {"tokens": n, "log_prob": total, "perplexity": math.exp(-total / n),
                              "bits_per_char": -total / n / math.log(2)})
        return out
    return run
