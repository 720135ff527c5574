"""A long run's progress as log lines (a file or a pipe takes them as well as a terminal):
one line every 5% of the work or every 10 seconds, whichever comes first, and a summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ProgressLog"]


class ProgressLog:
    """`done` of `total` items, counted from `start` (the items an earlier run did)."""

    def __init__(self, log: logging.Logger, total: int, start: int = 0, unit: str = "rows",
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.total, self.done, self.start, self.unit = log, total, start, start, unit
        self.every_s, self.clock = every_s, clock
        self.started = self.last_time = clock()
        self.step = max(1, total // 20)
        self.last_done = start

    def advance(self, count: int) -> None:
        """`count` more items are done (written)."""
        self.done += count
        now = self.clock()
        if self.done - self.last_done >= self.step or now - self.last_time >= self.every_s:
            self.last_done, self.last_time = self.done, now
            self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """Where the run stands: done, speed, time left."""
        spent = now - self.started
        ran = self.done - self.start
        rate = ran / spent if spent > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(1, self.total):.0f}%)"
                f", {rate:.0f} {self.unit}/s, {spent:.0f} s, about {left:.0f} s left")

    def finish(self) -> float:
        """Log the summary line; the seconds this run took."""
        spent = self.clock() - self.started
        ran = self.done - self.start
        resumed = f" ({self.start} done before)" if self.start else ""
        self.log.info("done: %d %s in %.1f s (%.0f %s/s)%s", ran, self.unit, spent,
                      ran / spent if spent > 0 else 0.0, self.unit, resumed)
        return spent
