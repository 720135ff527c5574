"""One model folder in the service: loading with warm-up, its batchers and generator, what
/models says of it, and retiring it once its in-flight work is done."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.allocator import weights_apart
from app.batching import BatchEngine
from app.generation.build import make_generator
from app.generation.service import Generator
from app.inference import classify_batch, score_batch, warm_up
from app.metrics import MODEL_READY
from app.settings import Settings
from textrnn.artifact import Artifact, ArtifactError, load_artifact

__all__ = ["ModelEntry", "fingerprint"]

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """One model folder: loaded and serving, or failed with a reason."""

    name: str
    folder: Path
    status: str = "loading"
    error: str | None = None
    artifact: Artifact | None = None
    classify: BatchEngine[str, list[float]] | None = None
    score: BatchEngine[str, dict[str, Any]] | None = None
    generator: Generator | None = None
    executor: ThreadPoolExecutor | None = field(default=None, repr=False)
    fingerprint: str = ""
    reload_error: str | None = None  # why the folder's newer version failed to replace this
    looking_inside: int = 0  # /inside and /explain requests waiting or running on the model

    def load(self, device: torch.device, weights: str = "float32") -> None:
        """Load and warm up the folder (blocking); a failure is recorded, never raised.
        `weights="float16"` stores LSTM and GRU weights as float16 on the CPU, where that
        applies (`Artifact.weights` says)."""
        self.fingerprint = fingerprint(self.folder)
        try:
            with weights_apart():  # a later reload gives this version's memory back
                self.artifact = load_artifact(self.folder, device, weights)
                warm_up(self.artifact, device)
            self.status = "ready"
            log.info("loaded model %s (%s, %d parameters, %s weights)", self.name,
                     self.artifact.task, self.artifact.parameters, self.artifact.weights)
        except ArtifactError as e:
            self.status, self.error = "failed", e.reason
            log.error("model %s failed to load: %s", self.name, e)
        except Exception as e:  # a broken folder must never stop the service
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("model %s failed to load", self.name)

    async def start(self, s: Settings, device: torch.device) -> None:
        """Start the batchers (on the running event loop) and the generation engine; a
        generation worker that cannot start fails the model, not the service."""
        if self.status == "ready" and self.artifact is not None:
            try:
                await self._start(s, device)
            except Exception as e:
                self.status, self.error = "failed", f"generation worker: {e}"
                log.exception("model %s failed to start", self.name)
                await self.stop()
        MODEL_READY.labels(self.name).set(1 if self.status == "ready" else 0)

    async def _start(self, s: Settings, device: torch.device) -> None:
        assert self.artifact is not None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{self.name}")
        if self.artifact.task == "classification":
            self.classify = BatchEngine(self.name, classify_batch(self.artifact), self.executor,
                                        s.max_batch_size, s.max_queue, s.max_wait_ms,
                                        s.request_timeout_s, len, s.max_batch_chars)
            self.classify.start()
        else:
            self.score = BatchEngine(self.name, score_batch(self.artifact), self.executor,
                                     s.max_batch_size, s.max_queue, s.max_wait_ms,
                                     s.request_timeout_s, len, s.max_batch_chars)
            self.score.start()
            self.generator = make_generator(self.artifact, self.folder, device, s)
            await self.generator.start()

    @property
    def busy(self) -> bool:
        """Whether any request is waiting or running on this model."""
        engines = [e for e in (self.classify, self.score) if e is not None]
        generating = self.generator is not None and (self.generator.active + self.generator.waiting) > 0
        return (any(e.depth > 0 or e.running for e in engines) or generating
                or self.looking_inside > 0)

    async def retire(self, grace_s: float) -> None:
        """Stop once in-flight work is done (or after `grace_s`)."""
        deadline = time.monotonic() + grace_s
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()
        # A retired entry serves no more: its model and engines are let go at once, whatever
        # still holds the entry itself (a finished request's frame, a log record).
        self.artifact = self.classify = self.score = self.generator = self.executor = None

    async def stop(self) -> None:
        """Stop the batchers and the scheduler now."""
        for engine in (self.classify, self.score):
            if engine is not None:
                await engine.stop()
        if self.generator is not None:
            await self.generator.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def task(self) -> str | None:
        """The model's task, when its config could be read."""
        return self.artifact.task if self.artifact else None

    def info(self) -> dict[str, Any]:
        """What GET /models tells about this model."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.error:
            out["reason"] = self.error
        if self.reload_error:
            out["reload_error"] = self.reload_error
        if self.generator is not None and self.generator.restarting:
            out["generation"] = f"restarting: {self.generator.lost_reason}"
        if self.artifact is not None:
            cfg = self.artifact.config
            out |= {"task": self.artifact.task, "architecture": cfg["architecture"],
                    "parameters": self.artifact.parameters, "weights": self.artifact.weights,
                    "labels": self.artifact.labels,
                    "metrics": _summary(cfg.get("metrics") or {}),
                    "sha256": cfg.get("weights_sha256"), "created_at": cfg.get("created_at")}
        return out

    @property
    def version(self) -> str:
        """Name and short weights hash, as sent in X-Model."""
        sha = (self.artifact.config.get("weights_sha256") or "")[:12] if self.artifact else ""
        return f"{self.name}@{sha}" if sha else self.name


def fingerprint(folder: Path) -> str:
    """What changes when a model folder's files change: their names, sizes and mtimes."""
    parts = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only (no confusion matrices) for listings."""
    return {split: {k: v for k, v in values.items() if isinstance(v, int | float)}
            for split, values in metrics.items() if isinstance(values, dict)}
