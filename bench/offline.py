"""The offline limit: the shipped models run in a tight loop in one process, no HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from textrnn.artifact import load_artifact
from textrnn.inference import classify_logits, pad_batch
from textrnn.nets import CharLM, RNNClassifier
from textrnn.sampling import RowParams, choose_tokens, uniform_table
from textrnn.tokenization import encode_batch

__all__ = ["classify_limit", "generate_limit"]


def classify_limit(folder: Path, texts: list[str], batch_size: int, seconds: float = 3.0,
                   device: str = "cpu", weights: str = "float16") -> float:
    """Texts/s for tokenisation + forward + softmax at `batch_size`, in the texts' order,
    with the weights held as the server holds them (`RNN_WEIGHTS`)."""
    art = load_artifact(folder, device, weights)  # float16 applies on the CPU only
    assert isinstance(art.net, RNNClassifier)
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            for i in range(0, len(texts), batch_size):
                chunk = texts[i:i + batch_size]
                seqs = encode_batch(art.tokenizer, chunk)
                torch.softmax(classify_logits(art.net, seqs), -1).tolist()
                done += len(chunk)
    return done / (time.perf_counter() - start)


def generate_limit(folder: Path, streams: int, tokens: int = 128, prompt: str = "ROMEO:",
                   device: str = "cpu", rounds: int = 1, weights: str = "float16") -> float:
    """Tokens/s generating `tokens` for `streams` rows in lock-step (prefill, steps, sampling),
    `rounds` times over (as many generations as the server's clients run at that level)."""
    art = load_artifact(folder, device, weights)
    net = art.net
    assert isinstance(net, CharLM)
    ids = art.tokenizer.encode(prompt).ids
    done, elapsed = 0, 0.0
    with torch.inference_mode():
        for r in range(rounds):
            params = RowParams(*(t.to(device) for t in (
                torch.full((streams,), 0.8), torch.full((streams,), 40, dtype=torch.long),
                torch.full((streams,), 0.95), torch.ones(streams),
                torch.arange(streams, dtype=torch.long) + r * streams)))
            start = time.perf_counter()
            batch, lengths = pad_batch([ids] * streams, device)
            logits, state = net.prefill(batch, lengths)
            uniforms = uniform_table(params.seed, tokens)  # as the server draws them
            for step in range(tokens):
                chosen, _ = choose_tokens(logits, params, None, banned=0,
                                          uniforms=uniforms[:, step])
                chosen.tolist()  # the server hands every token to Python to stream it
                if step + 1 < tokens:
                    logits, state = net.step(chosen, state)
            elapsed += time.perf_counter() - start
            done += streams * tokens
    return done / elapsed
