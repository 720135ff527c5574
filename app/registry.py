"""The model registry: loads every folder under the models directory onto the device,
runs one warm-up batch through each, and finds models by name or task."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.batching import BatchEngine
from app.errors import ModelNotFound, ModelNotReady, WrongTask
from app.generation import GenerationScheduler
from app.metrics import MODEL_READY
from app.settings import Settings
from textrnn.artifact import Artifact, ArtifactError, load_artifact
from textrnn.inference import classify_logits, sequence_logprobs
from textrnn.nets import CharLM, RNNClassifier
from textrnn.tokenization import encode_batch

__all__ = ["ModelEntry", "Registry", "resolve_device"]

log = logging.getLogger(__name__)
TASK_OF_ROUTE = {"classify": "classification", "generate": "generation", "score": "generation"}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"RNN_DEVICE={name} but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


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
    generator: GenerationScheduler | None = None
    executor: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def task(self) -> str | None:
        """The model's task, when its config could be read."""
        return self.artifact.task if self.artifact else None

    def info(self) -> dict[str, Any]:
        """What GET /models tells about this model."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.error:
            out["reason"] = self.error
        if self.artifact is not None:
            cfg = self.artifact.config
            out |= {"task": self.artifact.task, "architecture": cfg["architecture"],
                    "parameters": self.artifact.parameters, "labels": self.artifact.labels,
                    "metrics": _summary(cfg.get("metrics") or {}),
                    "sha256": cfg.get("weights_sha256"), "created_at": cfg.get("created_at")}
        return out

    @property
    def version(self) -> str:
        """Name and short weights hash, as sent in X-Model."""
        sha = (self.artifact.config.get("weights_sha256") or "")[:12] if self.artifact else ""
        return f"{self.name}@{sha}" if sha else self.name


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only (no confusion matrices) for listings."""
    return {split: {k: v for k, v in values.items() if isinstance(v, int | float)}
            for split, values in metrics.items() if isinstance(values, dict)}


def _classify_batch(artifact: Artifact) -> Callable[[list[str]], list[list[float]]]:
    net = artifact.net
    assert isinstance(net, RNNClassifier)
    max_length = artifact.config.get("max_length") or 10**9

    def run(texts: list[str]) -> list[list[float]]:
        with torch.inference_mode():
            seqs = [s[:max_length] for s in encode_batch(artifact.tokenizer, texts)]
            probs = torch.softmax(classify_logits(net, seqs).float(), dim=-1)  # B C
            result: list[list[float]] = probs.cpu().tolist()
            return result
    return run


def _score_batch(artifact: Artifact) -> Callable[[list[str]], list[dict[str, Any]]]:
    net = artifact.net
    assert isinstance(net, CharLM)

    def run(texts: list[str]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            seqs = encode_batch(artifact.tokenizer, texts)
            sums = sequence_logprobs(net, seqs).cpu().tolist()
        out = []
        for seq, total in zip(seqs, sums, strict=True):
            n = len(seq) - 1
            if n < 1:
                out.append({"tokens": 0, "log_prob": 0.0, "perplexity": None, "bits_per_char": None})
                continue
            out.append({"tokens": n, "log_prob": total, "perplexity": math.exp(-total / n),
                        "bits_per_char": -total / n / math.log(2)})
        return out
    return run


class Registry:
    """All model folders of `settings.models_dir`, by name."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.entries: dict[str, ModelEntry] = {}

    def load_all(self) -> None:
        """Load and warm up every folder; a broken folder is recorded as failed."""
        root = self.settings.models_dir
        if not root.is_dir():
            log.error("models directory %s does not exist", root)
            return
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entry = ModelEntry(folder.name, folder)
            self.entries[entry.name] = entry
            try:
                entry.artifact = load_artifact(folder, self.device)
                self._warm_up(entry.artifact)
                entry.status = "ready"
                log.info("loaded model %s (%s, %d parameters)", entry.name, entry.artifact.task,
                         entry.artifact.parameters)
            except ArtifactError as e:
                entry.status, entry.error = "failed", e.reason
                log.error("model %s failed to load: %s", entry.name, e)
            except Exception as e:  # a broken folder must never stop the service
                entry.status, entry.error = "failed", f"{type(e).__name__}: {e}"
                log.exception("model %s failed to load", entry.name)
            MODEL_READY.labels(entry.name).set(1 if entry.status == "ready" else 0)

    def _warm_up(self, artifact: Artifact) -> None:
        with torch.inference_mode():
            if isinstance(artifact.net, RNNClassifier):
                _classify_batch(artifact)(["warm up", "a b c"])
            else:
                _score_batch(artifact)(["warm up", "abc"])
                net = artifact.net
                net.step(torch.zeros(2, dtype=torch.long, device=self.device),
                         net.initial_state(2, self.device))

    def start(self) -> None:
        """Start each ready model's batchers (on the running event loop) and scheduler."""
        s = self.settings
        for entry in self.entries.values():
            if entry.status != "ready" or entry.artifact is None:
                continue
            entry.executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{entry.name}")
            if entry.artifact.task == "classification":
                entry.classify = BatchEngine(entry.name, _classify_batch(entry.artifact),
                                             entry.executor, s.max_batch_size, s.max_queue,
                                             s.max_wait_ms, s.request_timeout_s)
                entry.classify.start()
            else:
                entry.score = BatchEngine(entry.name, _score_batch(entry.artifact), entry.executor,
                                          s.max_batch_size, s.max_queue, s.max_wait_ms,
                                          s.request_timeout_s)
                entry.score.start()
                entry.generator = GenerationScheduler(entry.artifact, self.device,
                                                      s.max_active_sequences, s.max_queue,
                                                      s.request_timeout_s)
                entry.generator.start()

    async def stop(self) -> None:
        """Stop every batcher and scheduler."""
        for entry in self.entries.values():
            for engine in (entry.classify, entry.score):
                if engine is not None:
                    await engine.stop()
            if entry.generator is not None:
                entry.generator.stop()
            if entry.executor is not None:
                entry.executor.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> list[ModelEntry]:
        """Models that serve."""
        return [e for e in self.entries.values() if e.status == "ready"]

    def failed(self) -> list[ModelEntry]:
        """Models that failed to load."""
        return [e for e in self.entries.values() if e.status == "failed"]

    def default_name(self, task: str) -> str | None:
        """The configured default for a task, else the first ready model of that task."""
        configured = (self.settings.default_classifier if task == "classification"
                      else self.settings.default_generator)
        if configured:
            return configured
        for entry in self.ready():
            if entry.task == task:
                return entry.name
        return None

    def get(self, name: str | None, route: str) -> ModelEntry:
        """The model a request names (or the default for the route's task), ready to serve."""
        task = TASK_OF_ROUTE[route]
        name = name or self.default_name(task)
        if name is None:
            raise ModelNotFound(f"no {task} model is loaded; available: {self._available()}")
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' not found; available: {self._available()}")
        if entry.status != "ready":
            raise ModelNotReady(f"model '{name}' is {entry.status}: {entry.error}")
        if entry.task != task:
            raise WrongTask(f"model '{name}' is a {entry.task} model; /{route} needs a {task} "
                            f"model: {self._available(task)}")
        return entry

    def _available(self, task: str | None = None) -> str:
        names = [e.name for e in self.ready() if task is None or e.task == task]
        return ", ".join(names) or "none"
