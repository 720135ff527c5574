"""Prometheus metrics of the service (prometheus-client), in one registry per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTIVE_SEQUENCES",
    "BATCH_SIZE",
    "GENERATED_TOKENS",
    "MODEL_READY",
    "QUEUE_DEPTH",
    "QUEUE_WAIT",
    "REQUESTS",
    "REQUEST_DURATION",
    "TIME_TO_FIRST_TOKEN",
]

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("rnn_requests_total", "HTTP requests by route and status", ["route", "status"])
REQUEST_DURATION = Histogram("rnn_request_duration_seconds", "Request latency", ["route"],
                             buckets=_LATENCY)
QUEUE_DEPTH = Gauge("rnn_queue_depth", "Requests waiting per model", ["model"])
QUEUE_WAIT = Histogram("rnn_queue_wait_seconds", "Time from arrival to batch", ["model"],
                       buckets=_LATENCY)
BATCH_SIZE = Histogram("rnn_batch_size", "Rows per forward pass or generation step", ["model"],
                       buckets=_SIZES)
ACTIVE_SEQUENCES = Gauge("rnn_active_sequences", "Sequences being generated", ["model"])
GENERATED_TOKENS = Counter("rnn_generated_tokens_total", "Tokens generated", ["model"])
TIME_TO_FIRST_TOKEN = Histogram("rnn_time_to_first_token_seconds", "Time to first token",
                                ["model"], buckets=_LATENCY)
MODEL_READY = Gauge("rnn_model_ready", "1 when the model serves", ["model"])
