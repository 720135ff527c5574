"""A run's progress: a bar on a terminal, plain log lines when the output is a file or a pipe
(a bar's carriage returns would flood a log)."""

from __future__ import annotations

import sys
import time
from typing import IO

from tqdm import tqdm

__all__ = ["Progress"]

LINES = 20  # log lines over a whole run, besides the evaluations


class Progress:
    """Steps done of `total`, with the latest loss and speed; `write` adds a line."""

    def __init__(self, total: int, initial: int, enabled: bool, stream: IO[str] | None = None
                 ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.step = total, initial
        self.enabled = enabled
        self.bar: tqdm[None] | None = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train",
                            file=self.stream)
        self.every = max(1, total // LINES)
        self.started = time.monotonic()
        self.started_at = initial
        self.postfix = ""

    def update(self, step: int, loss: float | None = None, speed: float | None = None) -> None:
        """After an optimiser step; `loss` and `speed` when a new window's figures are in."""
        self.step = step
        if loss is not None and speed is not None:
            self.postfix = f"loss {loss:.4f}, {speed:.0f} items/s"
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", speed=f"{speed:.0f}/s")
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            self.write(self._line())

    def _line(self) -> str:
        spent = time.monotonic() - self.started
        done = self.step - self.started_at
        left = spent / done * (self.total - self.step) if done > 0 else 0.0
        return (f"step {self.step}/{self.total} ({100 * self.step / max(1, self.total):.0f}%)"
                + (f", {self.postfix}" if self.postfix else "")
                + f", {spent:.0f} s, about {left:.0f} s left")

    def write(self, line: str) -> None:
        """A line above the bar, or in the log."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar."""
        if self.bar is not None:
            self.bar.close()
