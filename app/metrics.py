"""Prometheus metrics of the service (prometheus-client), in one registry per process.

With `PROMETHEUS_MULTIPROC_DIR` set (several server processes, `python -m app.serve
--workers N`), every server process writes its values to files in that folder and `/metrics`
adds them up, so its answer is the same whichever process serves it. The gauges then say how
the processes combine: queues and running sequences add up over the live processes; a model
is ready when it is ready in every live one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

__all__ = [
    "ACTIVE_SEQUENCES",
    "BATCH_SIZE",
    "GENERATED_TOKENS",
    "MODEL_READY",
    "QUEUE_DEPTH",
    "QUEUE_WAIT",
    "RELOAD_FAILURES",
    "REQUESTS",
    "REQUEST_DURATION",
    "TIME_TO_FIRST_TOKEN",
    "collecting_registry",
    "multiprocess_dir",
]

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("rnn_requests_total", "HTTP requests by route and status", ["route", "status"])
REQUEST_DURATION = Histogram("rnn_request_duration_seconds", "Request latency", ["route"],
                             buckets=_LATENCY)
QUEUE_DEPTH = Gauge("rnn_queue_depth", "Requests waiting per model", ["model"],
                    multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("rnn_queue_wait_seconds", "Time from arrival to batch", ["model"],
                       buckets=_LATENCY)
BATCH_SIZE = Histogram("rnn_batch_size", "Rows per forward pass or generation step", ["model"],
                       buckets=_SIZES)
ACTIVE_SEQUENCES = Gauge("rnn_active_sequences", "Sequences being generated", ["model"],
                         multiprocess_mode="livesum")
GENERATED_TOKENS = Counter("rnn_generated_tokens_total", "Tokens generated", ["model"])
TIME_TO_FIRST_TOKEN = Histogram("rnn_time_to_first_token_seconds", "Time to first token",
                                ["model"], buckets=_LATENCY)
MODEL_READY = Gauge("rnn_model_ready", "1 when the model serves", ["model"],
                    multiprocess_mode="livemin")
RELOAD_FAILURES = Counter("rnn_model_reload_failures_total",
                          "Reloads whose new version of a model failed (the old one serves on)",
                          ["model"])

# A value file is named `<kind>_<pid>.db`; the pid says which process wrote it.
_PID = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The folder of the per-process metric files, or None in single-process mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process has that pid: not ours to forget
    try:  # an exited worker its supervisor has not reaped yet is a zombie: dead too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of server processes that have exited; their counters and
    histograms stay, so that totals never go down."""
    for path in folder.glob("gauge_live*_*.db"):
        match = _PID.search(path.name)
        if match and not _alive(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), str(folder))  # type: ignore[no-untyped-call]


def collecting_registry() -> CollectorRegistry:
    """The registry `/metrics` answers from: this process's, or the sum over every server
    process's files (dead processes' live gauges dropped first)."""
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    forget_dead_processes(folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    return registry
