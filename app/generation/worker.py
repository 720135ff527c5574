"""The generation worker process's side: load the model, run the engine on the server's
commands, send back its turns. Messages both ways are length-prefixed pickles."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.generation.engine import Engine
from app.generation.messages import Command, StepWrapper, drive
from textrnn.artifact import load_artifact

__all__ = ["HEADER", "WorkerSetup", "frames", "run_worker"]

HEADER = struct.Struct("!I")  # a message's length, before its pickle


@dataclass(frozen=True)
class WorkerSetup:
    """What the worker needs to build its engine: the model folder and the engine's options."""

    folder: Path
    device: str
    weights: str
    sha256: str | None  # the weights the server loaded; the worker refuses others
    max_active: int
    prefill_chunk: int
    hold_s: float = 0.0  # how long tokens mid-generation may wait to be sent with later ones


def frames(buffer: bytearray) -> list[Any]:
    """The complete messages at the start of `buffer`, removed from it."""
    out, at = [], 0
    while len(buffer) - at >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, at)
        if len(buffer) - at - HEADER.size < size:
            break
        start = at + HEADER.size
        out.append(pickle.loads(buffer[start:start + size]))
        at = start + size
    del buffer[:at]
    return out


def run_worker(setup: WorkerSetup, wrap_step: StepWrapper | None, down: socket.socket,
            up: socket.socket) -> None:
    """The worker process: load the model, then run the engine on the server's commands."""
    # The server ends this process, not the signals that a process manager or a terminal
    # sends to the whole group: the streams in flight must finish first.
    # SIGHUP asks the server to reload its models, which restarts this worker if need be.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)  # one torch thread per process is this service's setting

    def send(message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        up.sendall(HEADER.pack(len(data)) + data)

    try:
        artifact = load_artifact(setup.folder, torch.device(setup.device), setup.weights)
        if setup.sha256 and artifact.config.get("weights_sha256") != setup.sha256:
            raise RuntimeError(f"{setup.folder} changed since the server loaded it")
        engine = Engine.from_artifact(artifact, setup.max_active, setup.prefill_chunk)
        if wrap_step is not None:
            engine.step = wrap_step(engine.step)
    except Exception as exc:
        send(("error", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", os.getpid()))
    pending = bytearray()

    def receive(block: bool) -> list[Command] | None:
        while True:
            readable, _, _ = select.select([down], [], [], None if block else 0)
            if readable:
                chunk = down.recv(1 << 16)
                if not chunk:  # the server is gone
                    return None
                pending.extend(chunk)
            commands = frames(pending)
            if None in commands:
                return None
            if commands or not block:
                return commands

    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server is gone
        drive(engine, receive, send, setup.hold_s)
