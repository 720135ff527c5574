"""A loaded language model's `Generator`, with the transport the settings ask for."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from app.generation.engine import Engine
from app.generation.messages import StepWrapper
from app.generation.process import ProcessTransport
from app.generation.service import Generator, Transport
from app.generation.thread import ThreadTransport
from app.generation.worker import WorkerSetup
from app.settings import Settings
from textrnn.artifact import Artifact

__all__ = ["make_generator", "transport_kind"]

log = logging.getLogger(__name__)


def transport_kind(setting: str, device: torch.device) -> str:
    """Where RNN_GENERATION_WORKER runs the engine on `device`: `process` (a worker process;
    `auto` on the CPU under Linux) or `thread` (a GPU, whose CUDA context stays in the server,
    and wherever `thread` is asked for)."""
    if device.type != "cpu":
        if setting == "process":
            log.warning("RNN_GENERATION_WORKER=process needs the CPU; generating in a thread "
                        "on %s", device)
        return "thread"
    if setting == "auto":
        return "process" if sys.platform == "linux" else "thread"
    return setting


def make_generator(artifact: Artifact, folder: Path, device: torch.device,
                   settings: Settings) -> Generator:
    """The generator of a loaded language model, with the transport the settings ask for."""
    transport: Transport
    # A stream is written at most every RNN_STREAM_FLUSH_MS: tokens in the middle of a
    # generation may wait half that to leave the engine, in one message with later ones, so
    # that a stream's writes stay within about one and a half intervals of each other.
    hold_s = settings.stream_flush_ms / 2000
    if transport_kind(settings.generation_worker, device) == "process":
        transport = ProcessTransport(artifact.name, WorkerSetup(
            folder, str(device), settings.weights, artifact.config.get("weights_sha256"),
            settings.max_active_sequences, settings.prefill_chunk, hold_s))
    else:
        def make_engine(wrap_step: StepWrapper | None) -> Engine:
            engine = Engine.from_artifact(artifact, settings.max_active_sequences,
                                          settings.prefill_chunk)
            if wrap_step is not None:  # this engine's steps only, not the shared net's
                engine.step = wrap_step(engine.step)
            return engine
        transport = ThreadTransport(artifact.name, make_engine, hold_s)
    return Generator(artifact.name, transport, artifact.token_texts, settings.max_queue,
                     settings.request_timeout_s)
