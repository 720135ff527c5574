"""The model registry: every folder under the models directory, by name; lookup by name or
task; and hot reload that swaps in new or changed folders without failing a request."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import torch

from app.device import resolve_device
from app.entry import ModelEntry, fingerprint
from app.errors import ModelNotFound, ModelNotReady, WrongTask
from app.metrics import MODEL_READY, RELOAD_FAILURES
from app.settings import Settings

__all__ = ["SHIPPED_DEFAULTS", "Registry", "pick_default", "resolve_device"]

log = logging.getLogger(__name__)
TASK_OF_ROUTE = {"classify": "classification", "generate": "generation", "score": "generation"}
# The models that ship in models/: each task's default wherever it is served.
SHIPPED_DEFAULTS = {"classification": "sentiment", "generation": "shakespeare"}


def pick_default(task: str, configured: str | None, ready: list[ModelEntry]) -> str | None:
    """The default model of `task`, in this order: the setting (RNN_DEFAULT_CLASSIFIER or
    RNN_DEFAULT_GENERATOR), a model whose config.json says `"default": true`, the shipped
    model of the task, the only model of the task; with several and none of those, the one
    created first (config.json's `created_at`, then the name). A folder added later never
    takes over: a newly trained model is created after those already served."""
    if configured:
        return configured
    mine = [e for e in ready if e.task == task]
    marked = sorted(e.name for e in mine if e.artifact is not None
                    and e.artifact.config.get("default") is True)
    if marked:
        return marked[0]
    if any(e.name == SHIPPED_DEFAULTS.get(task) for e in mine):
        return SHIPPED_DEFAULTS[task]
    oldest = sorted(mine, key=lambda e: (str(e.artifact.config.get("created_at") or "")
                                         if e.artifact is not None else "", e.name))
    return oldest[0].name if oldest else None


class Registry:
    """All model folders of `settings.models_dir`, by name."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.entries: dict[str, ModelEntry] = {}
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[Any]] = set()

    def _folders(self) -> list[Path]:
        root = self.settings.models_dir
        if not root.is_dir():
            log.error("models directory %s does not exist", root)
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load_all(self) -> None:
        """Load and warm up every folder (blocking); a broken folder is recorded as failed."""
        for folder in self._folders():
            entry = ModelEntry(folder.name, folder)
            entry.load(self.device, self.settings.weights)
            self.entries[entry.name] = entry

    async def start(self) -> None:
        """Start every ready model's batchers and generation engine on the running loop."""
        for entry in self.entries.values():
            await entry.start(self.settings, self.device)

    async def stop(self) -> None:
        """Stop every model now."""
        for entry in self.entries.values():
            await entry.stop()

    async def reload(self) -> dict[str, list[str]]:
        """Rescan the folder: load new and changed models beside the old ones, swap them in at
        once, and retire replaced or removed models after their in-flight work ends."""
        async with self._reload_lock:
            current = dict(self.entries)
            folders = {f.name: f for f in self._folders()}
            changed = [name for name, f in folders.items()
                       if name not in current or current[name].fingerprint != fingerprint(f)]
            fresh = {name: ModelEntry(name, folders[name]) for name in changed}
            for entry in fresh.values():
                await asyncio.to_thread(entry.load, self.device, self.settings.weights)
                await entry.start(self.settings, self.device)
            # A new version that fails never replaces one that serves: the old one goes on
            # answering, and the failure is reported (log, /models, metric) until a later
            # reload succeeds. A folder caught half-written is retried at the next reload.
            held = sorted(n for n, e in fresh.items()
                          if e.status != "ready" and n in current and current[n].status == "ready")
            for name in held:
                failed = fresh.pop(name)
                current[name].reload_error = failed.error
                RELOAD_FAILURES.labels(name).inc()
                MODEL_READY.labels(name).set(1)
                log.error("model %s: the new version in %s failed (%s); the version loaded "
                          "before goes on serving", name, failed.folder, failed.error)
            kept = [n for n in folders if n not in fresh and n not in held]
            for name in kept:  # as it was when it loaded: nothing left to report
                current[name].reload_error = None
            self.entries = {name: fresh.get(name) or current[name] for name in sorted(folders)}
            for name in current.keys() - folders.keys():  # a removed model has no readiness
                MODEL_READY.remove(name)
            retired = [e for n, e in current.items() if n not in folders or n in fresh]
            for entry in retired:
                task = asyncio.get_running_loop().create_task(
                    entry.retire(self.settings.request_timeout_s))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            report = {"loaded": sorted(n for n, e in fresh.items() if e.status == "ready"),
                      "kept": sorted(kept),
                      "removed": sorted(n for n in current if n not in folders),
                      "failed": sorted([*held, *(n for n, e in fresh.items() if e.status != "ready")]),
                      "failed_kept_serving": held}
            log.info("reload: %s", report)
            return report

    def ready(self) -> list[ModelEntry]:
        """Models that serve."""
        return [e for e in self.entries.values() if e.status == "ready"]

    def failed(self) -> list[ModelEntry]:
        """Models that failed to load."""
        return [e for e in self.entries.values() if e.status == "failed"]

    def default_name(self, task: str) -> str | None:
        """The model a request without "model" gets for `task`; see `pick_default`."""
        configured = (self.settings.default_classifier if task == "classification"
                      else self.settings.default_generator)
        return pick_default(task, configured, self.ready())

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
