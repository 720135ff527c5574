"""The engine's bookkeeping: a request being generated, and a group of them with their
recurrent state, one row each (the running batch, or the prompts being prefilled)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.generation.messages import GenerationSpec
from textrnn.nets import State, index_state
from textrnn.sampling import RowParams

__all__ = ["Rows", "Seq"]


class Seq:
    """A request being generated: its spec and how far it has come."""

    __slots__ = ("generated", "read", "spec", "tail", "uniforms")

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec
        self.read = 0  # prompt tokens prefilled so far
        self.generated = 0
        self.tail = ""  # the end of its text, as long as the longest stop sequence
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


def _device(state: State) -> torch.device:
    """The device a recurrent state is on."""
    return state[0].device if isinstance(state, tuple) else state.device
