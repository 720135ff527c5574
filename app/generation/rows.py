"""The engine's bookkeeping: a request being generated, and a group of them with their
recurrent state, one row each (the running batch, or the prompts being prefilled)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.generation.messages import GenerationSpec
from textrnn.nets import State, concat_states, index_state
from textrnn.sampling import RowParams
from textrnn.stops import StopMatcher

__all__ = ["Rows", "Seq", "join_rows", "stop_matcher", "take_row"]


class Seq:
    """A request being generated: its spec and how far it has come."""

    __slots__ = ("generated", "matched", "parked", "read", "spec", "stops", "uniforms")

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec
        self.read = 0  # prompt tokens prefilled so far
        self.generated = 0
        self.stops = stop_matcher(spec.sampling.stop) if spec.sampling.stop else None
        self.matched = 0  # the stop matcher's state after the text so far
        self.parked: Rows | None = None  # its row, while it waits for a slot again
        self.uniforms: list[float] = []  # one random number per token, drawn at admission


@dataclass
class Rows:
    """A group of sequences with their recurrent state, one row each."""

    seqs: list[Seq] = field(default_factory=list)
    state: State | None = None
    last: Tensor | None = None  # B: each row's last token (the running batch's)
    seen: Tensor | None = None  # B V: how often each row has seen each token (penalties')
    params: RowParams | None = None

    def keep(self, rows: list[int]) -> None:
        """Keep only the given rows, in order."""
        if len(rows) == len(self.seqs):
            return
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        assert self.state is not None
        index = torch.tensor(rows, dtype=torch.long, device=_device(self.state))
        self.seqs = [self.seqs[i] for i in rows]
        self.state = index_state(self.state, index)
        if self.last is not None and self.seen is not None and self.params is not None:
            self.last, self.seen = self.last.index_select(0, index), self.seen.index_select(0, index)
            self.params = self.params.rows(index)


@functools.lru_cache(maxsize=256)
def stop_matcher(stops: tuple[str, ...]) -> StopMatcher:
    """The automaton of a set of stop sequences (siblings and repeated requests share one)."""
    return StopMatcher(stops)


def take_row(rows: Rows, row: int) -> Rows:
    """Take one row out of a running batch, with its state, last token, counts and params."""
    assert rows.state is not None and rows.last is not None
    assert rows.seen is not None and rows.params is not None
    index = torch.tensor([row], dtype=torch.long, device=_device(rows.state))
    taken = Rows([rows.seqs[row]], index_state(rows.state, index), rows.last.index_select(0, index),
                 rows.seen.index_select(0, index), rows.params.rows(index))
    rows.keep([i for i in range(len(rows.seqs)) if i != row])
    return taken


def join_rows(parts: list[Rows]) -> Rows:
    """Running rows joined, in order (empty parts skipped)."""
    parts = [p for p in parts if p.seqs]
    if len(parts) <= 1:
        return parts[0] if parts else Rows()
    states = [p.state for p in parts if p.state is not None]
    return Rows([q for p in parts for q in p.seqs], concat_states(states),
                torch.cat([p.last for p in parts if p.last is not None]),
                torch.cat([p.seen for p in parts if p.seen is not None]),
                RowParams.cat([p.params for p in parts if p.params is not None]))


def _device(state: State) -> torch.device:
    """The device a recurrent state is on."""
    return state[0].device if isinstance(state, tuple) else state.device
