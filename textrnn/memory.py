"""What a recurrent layer holds at every step: `trace_layer` runs the cells step by step from the
module's own weights and keeps the hidden state, the LSTM's cell state and every gate; and
`rank_units`, which units' activations separate marked steps from the others (by AUC).

Torch's fused kernels return only the outputs, never the gates, so the cell equations are
written out here with torch's gate order and conventions (the GRU's reset gate multiplies
`W_hn h + b_hn`, as in `nn.GRU`), and a test holds them to torch's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from textrnn.halfweights import HalfWeightRNN
from textrnn.nets import CharLM, RNNClassifier
from textrnn.pieces import Pieces, finish

__all__ = ["PIECE_STEPS", "SERIES", "LayerTrace", "float_rnn", "rank_units", "trace_layer",
           "trace_layer_pieces", "units_of"]

PIECE_STEPS = 256  # steps of one layer run between two pauses of `trace_layer_pieces`

# What each cell holds per step, in the order of its gate chunks in torch's weights
# (LSTM: input, forget, candidate g, output; GRU: reset r, update z, new n).
SERIES: dict[str, tuple[str, ...]] = {
    "rnn": ("hidden",),
    "gru": ("hidden", "reset", "update", "new"),
    "lstm": ("hidden", "cell", "input", "forget", "candidate", "output"),
}


@dataclass(frozen=True)
class LayerTrace:
    """Every step's values of one layer: series name -> [T, D*H]; the units of the reverse
    direction (a bidirectional net) follow the forward ones, as in torch's outputs."""

    layer: int
    series: dict[str, Tensor]


def float_rnn(net: RNNClassifier | CharLM) -> nn.RNNBase:
    """The net's recurrent module with float32 weights (a `HalfWeightRNN` keeps its source)."""
    rnn = net.rnn
    source = rnn.source if isinstance(rnn, HalfWeightRNN) else rnn
    assert isinstance(source, nn.RNNBase)
    return source


def units_of(net: RNNClassifier | CharLM) -> int:
    """Units per layer: directions x hidden size."""
    return net.config.hidden_size * (2 if net.config.bidirectional else 1)


def trace_layer(net: RNNClassifier | CharLM, ids: Tensor, layer: int) -> LayerTrace:
    """Every series of `layer` (0 is the layer next to the embedding) while the net reads
    token ids [T] from a zero state; lower layers run step by step too, so every value
    comes from the same equations."""
    with torch.no_grad():
        return finish(trace_layer_pieces(net, ids, layer))


def trace_layer_pieces(net: RNNClassifier | CharLM, ids: Tensor, layer: int,
                       every: int = PIECE_STEPS) -> Pieces[LayerTrace]:
    """`trace_layer` in pieces of `every` steps of one layer (run it without grad)."""
    rnn = float_rnn(net)
    cell = net.config.cell
    directions = 2 if rnn.bidirectional else 1
    x = net.embedding(ids).float()  # T E
    series: dict[str, Tensor] = {}
    for depth in range(layer + 1):
        runs = []
        for d in range(directions):
            runs.append((yield from _run(rnn, cell, x, depth, d == 1, every)))
        series = {name: torch.cat([r[name] for r in runs], dim=-1) for name in runs[0]}
        x = series["hidden"]  # T D*H: the next layer's input
    return LayerTrace(layer, series)


def _run(rnn: nn.RNNBase, cell: str, x: Tensor, layer: int, reverse: bool,
         every: int) -> Pieces[dict[str, Tensor]]:
    """One direction of one layer over inputs x [T, I]: each series [T, H], in text order."""
    suffix = "_reverse" if reverse else ""
    w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{layer}{suffix}").float()
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    steps, hidden = x.size(0), w_hh.size(1)
    xs = x.flip(0) if reverse else x
    gi = torch.addmm(b_ih, xs, w_ih.t())  # T G*H: every input projection at once
    names = SERIES[cell]
    out = x.new_empty(len(names), steps, hidden)  # S T H
    h, c = x.new_zeros(hidden), x.new_zeros(hidden)
    activation = torch.relu if getattr(rnn, "nonlinearity", "tanh") == "relu" else torch.tanh
    for t in range(steps):
        if t and t % every == 0:
            yield
        gh = torch.addmv(b_hh, w_hh, h)  # G*H
        if cell == "lstm":
            i, f, g, o = (gi[t] + gh).chunk(4)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            values: tuple[Tensor, ...] = (h, c, i, f, g, o)
        elif cell == "gru":
            r_i, z_i, n_i = gi[t].chunk(3)
            r_h, z_h, n_h = gh.chunk(3)
            r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
            n = torch.tanh(n_i + r * n_h)
            h = (1 - z) * n + z * h
            values = (h, r, z, n)
        else:
            h = activation(gi[t] + gh)
            values = (h,)
        for k, v in enumerate(values):
            out[k, t] = v
    if reverse:
        out = out.flip(1)
    return {name: out[k] for k, name in enumerate(names)}


def rank_units(values: Tensor, inside: Tensor) -> Tensor:
    """The AUC of each unit [U] at telling steps inside (`inside` [T] true) from the others,
    given activations [T, U]: the chance that a random inside step's value is above a random
    outside step's, ties counting half. 1 or 0 separate perfectly; 0.5 is chance."""
    pos, neg = values[inside].t(), values[~inside].t()  # U P, U N
    if pos.size(1) == 0 or neg.size(1) == 0:
        raise ValueError("the marked steps must leave at least one step inside and one outside")
    neg_sorted = neg.contiguous().sort(dim=1).values  # U N
    pos = pos.contiguous()
    below = torch.searchsorted(neg_sorted, pos, right=False)  # U P: outside values < each
    not_above = torch.searchsorted(neg_sorted, pos, right=True)  # U P: outside values <= each
    wins = below.sum(1).double() + 0.5 * (not_above - below).sum(1).double()
    return (wins / (pos.size(1) * neg.size(1))).float()
