"""What goes into the generation engine and what comes out: request specs, cancellations
and turns (plain, picklable values), and `drive`, the loop a transport runs the engine with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from app.generation.engine import Engine

__all__ = ["Command", "Failure", "GenerationSpec", "Sampling", "StepWrapper", "Turn", "drive"]

# Wraps a net's step function (fault injection and slowed steps in tests); picklable for the
# worker process, which applies it to its own copy of the model.
StepWrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True, slots=True)
class Sampling:
    """How a generation samples and when it ends, whichever protocol asked: the one shape of
    these values from a route's validation to the engine's rows (greedy: temperature 0)."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off
    typical_p: float = 1.0  # 1: off
    frequency_penalty: float = 0.0  # 0: off
    presence_penalty: float = 0.0  # 0: off
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0  # alternatives reported with each token


@dataclass(frozen=True)
class GenerationSpec:
    """One generation: its prompt, sampling, seed and deadline (immutable, picklable).
    `group` is the request it belongs to (its `n` or `best_of` siblings share it) and
    `tenant` who sent it: the engine shares its slots between groups and tenants."""

    id: int
    prompt_ids: tuple[int, ...]
    sampling: Sampling
    seed: int = 0
    enqueued: float = 0.0  # time.monotonic() at arrival (one clock for every process)
    deadline: float = math.inf  # a request still queued after this fails
    group: int = -1  # -1: a group of its own
    tenant: str = ""


@dataclass(frozen=True)
class Failure:
    """A request that ended without its tokens: it waited past its deadline, or a step failed."""

    request: int
    kind: Literal["deadline", "error"]
    message: str


@dataclass
class Turn:
    """What one turn (or several, merged) produced, in columns: a token per entry of
    `requests`, `tokens` and `logprobs` (in each request's order), and the reason for each
    request that ended."""

    requests: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: dict[int, str] = field(default_factory=dict)  # request -> finish reason
    # The likeliest tokens (id, logprob) beside each token, for requests that asked (by the
    # token's position in the columns above).
    alternatives: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    admitted: list[tuple[int, float]] = field(default_factory=list)  # (request, seconds queued)
    firsts: int = 0  # requests whose first token is among the tokens
    steps: list[int] = field(default_factory=list)  # the rows of each batched step
    active: int = 0  # sequences running or prefilling after the turn
    waiting: int = 0  # requests queued after the turn

    @property
    def urgent(self) -> bool:
        """Whether a request starts, ends or fails in it: what the server must hear at once
        (time to first token, a whole answer's end)."""
        return bool(self.firsts or self.finished or self.failures or self.admitted)

    def extend(self, later: Turn) -> None:
        """Add a later turn's results after these."""
        at = len(self.requests)
        self.requests += later.requests
        self.tokens += later.tokens
        self.logprobs += later.logprobs
        self.finished.update(later.finished)
        self.alternatives.update({at + i: top for i, top in later.alternatives.items()})
        self.failures += later.failures
        self.admitted += later.admitted
        self.firsts += later.firsts
        self.steps += later.steps
        self.active, self.waiting = later.active, later.waiting


# What a transport hands the engine's loop: a request to add, the id of one to cancel.
Command = GenerationSpec | int


def drive(engine: Engine, receive: Callable[[bool], list[Command] | None],
          emit: Callable[[Turn], None], hold_s: float = 0.0,
          clock: Callable[[], float] = time.monotonic) -> None:
    """Run the engine until `receive` returns None: take the commands waiting (blocking for
    them only while the engine is idle), then run a turn, and `emit` what it did.

    Tokens in the middle of a generation are held up to `hold_s` and emitted with the later
    turns' in one message: each message wakes the server, which writes a stream only once per
    flush interval anyway. A turn in which a request starts, ends or fails is emitted at once with
    everything held, and so is the last turn before the engine goes idle."""
    counts = (0, 0)  # (active, waiting) as last reported (emitted or held)
    held: Turn | None = None
    since = 0.0  # when the oldest turn held was made
    with torch.inference_mode():
        while True:
            commands = receive(engine.idle)
            if commands is None:
                return
            for command in commands:
                if isinstance(command, GenerationSpec):
                    engine.add(command)
                else:
                    engine.cancel(command)
            if engine.idle:
                continue
            turn = engine.turn()
            urgent = False
            if (turn.requests or turn.failures or turn.admitted
                    or (turn.active, turn.waiting) != counts):
                counts, urgent = (turn.active, turn.waiting), turn.urgent
                if held is None:
                    held, since = turn, clock()
                else:
                    held.extend(turn)
            # A turn with nothing in it (a long prompt being read) still lets the held go.
            if held is not None and (urgent or engine.idle or clock() - since >= hold_s):
                emit(held)
                held = None
