"""The language-model task: stateful truncated back-propagation through time over
parallel streams, and validation on held-out text read as a stream with the state carried."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from textrnn.nets import CharLM, State

from .distributed import Part

__all__ = ["LMJob", "char_ids", "stream_loss"]


def _detach(state: State) -> State:
    return (state[0].detach(), state[1].detach()) if isinstance(state, tuple) else state.detach()


def char_ids(tokenizer: Tokenizer, text: str) -> Tensor:
    """Ids of every character of `text` (unseen ones are the unknown id 0), as a tensor."""
    vocab = tokenizer.get_vocab()
    return torch.tensor([vocab.get(ch, 0) for ch in text], dtype=torch.long)


def stream_loss(net: CharLM, ids: Tensor, streams: int = 1, chunk: int = 512) -> float:
    """Mean next-token loss (nats) over `ids`, read as `streams` contiguous pieces in parallel
    with the state carried from chunk to chunk (streams=1 reads the text as one stream)."""
    device = net.head.weight.device
    width = (ids.numel() - 1) // streams
    x_all = ids[: streams * width].view(streams, width).to(device)  # S N
    y_all = ids[1 : streams * width + 1].view(streams, width).to(device)  # S N
    total, state = 0.0, None
    for t in range(0, width, chunk):
        logits, state = net(x_all[:, t:t + chunk], state)  # S T V
        total += float(F.cross_entropy(logits.flatten(0, 1).float(),
                                       y_all[:, t:t + chunk].flatten(), reduction="sum"))
    return total / (streams * width)


class LMJob:
    """Supplies `fit` with BPTT windows over `streams` parallel slices of the training text."""

    metric = "loss"
    higher_is_better = False

    def __init__(self, net: CharLM, train_ids: Tensor, val_ids: Tensor, streams: int,
                 bptt: int, seed: int, eval_streams: int = 16, part: Part | None = None) -> None:
        self.net = net
        self.part = part or Part()
        width = (train_ids.numel() - 1) // streams
        # Under torchrun each rank carries its own contiguous range of the streams.
        mine = self.part.span(streams)
        if mine.stop == mine.start:
            raise ValueError(f"--streams {streams} leaves rank {self.part.rank} of "
                             f"{self.part.world_size} without a stream; use at least "
                             f"{self.part.world_size} streams")
        # The training text is small next to the net: it goes to the device once, instead
        # of one copy per window.
        device = net.head.weight.device
        self.x = train_ids[: streams * width].view(streams, width)[mine].to(device)  # S N
        self.y = train_ids[1 : streams * width + 1].view(streams, width)[mine].to(device)  # S N
        self.val_ids = val_ids
        self.streams, self.bptt, self.seed = streams, bptt, seed
        self.eval_streams = eval_streams
        self.state: State | None = None

    def batches(self, epoch: int) -> Sequence[tuple[int, bool]]:
        """(start, first-of-epoch) windows; each epoch starts at a different offset."""
        offset = random.Random(self.seed * 100_003 + epoch).randrange(self.bptt)
        starts = range(offset, self.x.size(1) - 1, self.bptt)
        return [(t, i == 0) for i, t in enumerate(starts)]

    def loss(self, batch: tuple[int, bool]) -> tuple[Tensor, int]:
        """Mean loss over one window; the state flows in from the previous window."""
        start, first = batch
        if first:
            self.state = None
        device = self.net.head.weight.device
        x = self.x[:, start:start + self.bptt].to(device)  # S T
        y = self.y[:, start:start + self.bptt].to(device)  # S T
        logits, state = self.net(x, self.state)  # S T V
        self.state = _detach(state)
        if self.part.world_size == 1:
            return F.cross_entropy(logits.flatten(0, 1), y.flatten()), x.numel()
        # This rank's share of the mean over all streams (see ClassifierJob.loss).
        total = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        return total / (self.streams * x.size(1)), x.numel()

    def evaluate(self) -> dict[str, Any]:
        """Validation loss and bits per character."""
        loss = stream_loss(self.net, self.val_ids, streams=self.eval_streams)
        return {"loss": loss, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss)}

    def extra_state(self) -> dict[str, Tensor]:
        """The carried recurrent state, so a resumed run continues the same streams."""
        if self.state is None:
            return {}
        if isinstance(self.state, tuple):
            return {"h": self.state[0], "c": self.state[1]}
        return {"h": self.state}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore the carried state."""
        if "c" in state:
            self.state = (state["h"], state["c"])
        else:
            self.state = state.get("h")
