"""Recurrent nets for both tasks: `RNNClassifier` and `CharLM`, built from a `NetConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from textrnn.halfweights import HalfWeightRNN

__all__ = [
    "CELLS",
    "POOLINGS",
    "TASKS",
    "CharLM",
    "NetConfig",
    "RNNClassifier",
    "State",
    "build_net",
    "concat_states",
    "count_parameters",
    "index_state",
]

CELLS = ("rnn", "lstm", "gru")
POOLINGS = ("last", "mean", "max", "concat")
TASKS = ("classification", "generation")

# A recurrent state: h [L*D, B, H] for rnn/gru, (h, c) for lstm.
State = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a net; stored as `architecture` in config.json."""

    task: Literal["classification", "generation"]
    vocab_size: int
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    embedding_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    pooling: Literal["last", "mean", "max", "concat"] = "max"
    tie_weights: bool = False
    num_labels: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.cell not in CELLS:
            problems.append(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.task == "classification" and self.num_labels < 2:
            problems.append(f"num_labels must be at least 2 for a classifier, got {self.num_labels}")
        if self.task == "generation" and self.bidirectional:
            problems.append("a language model cannot be bidirectional")
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            problems.append(
                f"tie_weights needs embedding_dim == hidden_size, got "
                f"{self.embedding_dim} and {self.hidden_size}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        """Build from a dict, refusing unknown keys so a typo never passes silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture keys: {', '.join(unknown)}")
        return cls(**data)


def _recurrent(cell: str, input_size: int, hidden: int, layers: int, dropout: float,
               bidirectional: bool) -> nn.RNNBase:
    kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
    return kind(  # type: ignore[no-any-return]
        input_size,
        hidden,
        num_layers=layers,
        dropout=dropout if layers > 1 else 0.0,
        bidirectional=bidirectional,
        batch_first=True,
    )


def _pack_ids(ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`pack_padded_sequence` for token ids, before the embedding: the tokens [N] of right-
    padded `ids` [B, T] in packed order (time-major, longest row first), the batch size at
    each step [T] (on the CPU), the sorting order [B], and each token's row [N].

    Packing the ids and embedding only the real tokens costs a few ops; packing the [B, T, E]
    embeddings copies them step by step, about a tenth of a batch's time on the CPU."""
    width = ids.size(1)
    sorted_lengths, order = lengths.cpu().sort(descending=True)
    live = torch.arange(width)[:, None] < sorted_lengths[None, :]  # T B: row has a token at t
    order_on, live_on = order.to(ids.device), live.to(ids.device)
    tokens = ids.index_select(0, order_on).t()[live_on]
    rows = order_on.expand(width, -1)[live_on]
    return tokens, live.sum(1), order_on, rows


class RNNClassifier(nn.Module):
    """Embedding -> (bi)RNN -> pooling over time -> linear head giving one logit per label."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = _recurrent(config.cell, config.embedding_dim, config.hidden_size,
                              config.num_layers, config.dropout, config.bidirectional)
        features = config.hidden_size * directions * (3 if config.pooling == "concat" else 1)
        self.head = nn.Linear(features, config.num_labels)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Logits [B, C] for padded ids [B, T] whose true lengths are `lengths` [B] (all >= 1)."""
        tokens, batch_sizes, order, rows = _pack_ids(ids, lengths)
        emb = self.dropout(self.embedding(tokens))  # N E
        out_packed, state = self.rnn(PackedSequence(emb, batch_sizes, order, order.argsort()))
        pooling = self.config.pooling
        if pooling == "max":  # over each row's own outputs, straight from the packed data
            data = out_packed.data  # N D*H
            pooled = data.new_full((ids.size(0), data.size(1)), float("-inf")).scatter_reduce(
                0, rows[:, None].expand_as(data), data, "amax")
            return self.head(self.dropout(pooled))  # type: ignore[no-any-return]
        h_n = state[0] if isinstance(state, tuple) else state  # L*D B H
        directions = 2 if self.config.bidirectional else 1
        pooled = last = h_n[-directions:].transpose(0, 1).reshape(ids.size(0), -1)  # B D*H
        if pooling != "last":
            out, _ = pad_packed_sequence(out_packed, batch_first=True)  # B T' D*H, zero-padded
            mean = out.sum(1) / lengths.to(out.device)[:, None]
            pooled = mean
            if pooling == "concat":
                mask = (torch.arange(out.size(1), device=out.device)[None, :]
                        < lengths.to(out.device)[:, None]).unsqueeze(-1)  # B T' 1
                peak = out.masked_fill(~mask, float("-inf")).max(1).values
                pooled = torch.cat([last, mean, peak], dim=-1)  # B 3*D*H
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]


class CharLM(nn.Module):
    """Embedding -> RNN -> linear over the vocabulary; `step` advances one token at a time."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = _recurrent(config.cell, config.embedding_dim, config.hidden_size,
                              config.num_layers, config.dropout, False)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits [B, T, V] for ids [B, T], and the state after the last token."""
        emb = self.dropout(self.embedding(ids))  # B T E
        out, state = self.rnn(emb, state)  # B T H
        return self.head(self.dropout(out)), state

    def prefill(self, ids: Tensor, lengths: Tensor,
                state: State | None = None) -> tuple[Tensor, State]:
        """Read right-padded prompts ids [B, T] of `lengths` [B], starting from `state` (zeros
        when None: a prompt's beginning); return the logits [B, V] after each row's last token
        and the state there (padding never reaches a row's state). Reading a prompt in pieces,
        each from the state the last left, is reading it whole."""
        tokens, batch_sizes, order, _ = _pack_ids(ids, lengths)
        emb = self.embedding(tokens)  # N E
        _, state = self.rnn(PackedSequence(emb, batch_sizes, order, order.argsort()), state)
        top = state[0][-1] if isinstance(state, tuple) else state[-1]  # B H
        return self.head(top), state

    def step(self, ids: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One token per row: ids [B] -> logits [B, V] and the next state.

        Runs the cell functions layer by layer on the recurrent module's own weights: for one
        time step this skips most of the fixed cost of a full `nn.LSTM` call.
        """
        if state is None:
            state = self.initial_state(ids.size(0), ids.device)
        x = self.embedding(ids)  # B E
        rnn, hs, cs = self.rnn, [], []
        for layer in range(self.config.num_layers):
            hx = (state[0][layer], state[1][layer]) if isinstance(state, tuple) else state[layer]
            if isinstance(rnn, HalfWeightRNN):
                out = rnn.cell(layer, x, hx)
            else:
                weights = [getattr(rnn, f"{name}_l{layer}") for name in
                           ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                if isinstance(hx, tuple):
                    out = torch.lstm_cell(x, hx, *weights)
                elif self.config.cell == "gru":
                    out = torch.gru_cell(x, hx, *weights)
                else:
                    out = torch.rnn_tanh_cell(x, hx, *weights)
            if isinstance(out, tuple):
                x, c = out
                cs.append(c)
            else:
                x = out
            hs.append(x)  # B H
        h = torch.stack(hs)  # L B H
        return self.head(x), ((h, torch.stack(cs)) if cs else h)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """Zeros state for `batch` rows."""
        shape = (self.config.num_layers, batch, self.config.hidden_size)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h


def index_state(state: State, rows: Tensor) -> State:
    """The state of the given batch rows (dim 1), in the order given."""
    if isinstance(state, tuple):
        return (state[0].index_select(1, rows), state[1].index_select(1, rows))
    return state.index_select(1, rows)


def concat_states(states: list[State]) -> State:
    """Join states along the batch dimension."""
    if isinstance(states[0], tuple):
        pairs = [s for s in states if isinstance(s, tuple)]
        return (torch.cat([h for h, _ in pairs], 1), torch.cat([c for _, c in pairs], 1))
    return torch.cat([s for s in states if isinstance(s, Tensor)], 1)


def build_net(config: NetConfig) -> RNNClassifier | CharLM:
    """The net a config describes, with fresh weights."""
    return RNNClassifier(config) if config.task == "classification" else CharLM(config)


def count_parameters(net: nn.Module) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in net.parameters())
