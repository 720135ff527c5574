"""A long computation written as a generator that stops between pieces of work, so whoever
runs it can let other work go between two pieces (the service runs each piece as a separate
task on a model's inference thread, so that model's batches are not held up for the whole).

A piece must not hold a context across its `yield` (grad or inference mode is per thread,
and other work runs on that thread in between): each piece enters the modes it needs itself.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

__all__ = ["Pieces", "finish", "step"]

T = TypeVar("T")

Pieces = Generator[None, None, T]  # each next() runs one piece; the return value is the result


def step(pieces: Pieces[T]) -> tuple[bool, T | None]:
    """Run the next piece: (True, the result) after the last, else (False, None)."""
    try:
        next(pieces)
    except StopIteration as done:
        return True, done.value
    return False, None


def finish(pieces: Pieces[T]) -> T:
    """Run every piece, here and now: the result."""
    while True:
        done, result = step(pieces)
        if done:
            return result  # type: ignore[return-value]
