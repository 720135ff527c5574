"""Half-precision weights for CPU inference: `HalfWeightRNN` and `use_half_weights`.

A recurrent step on the CPU mostly reads weights: at batch 1 every generation step streams
all of the GRU's matrices (10 MB for the shipped 2x512 GRU), and at any batch the per-step
cost that does not shrink with the batch is that read. fbgemm can keep a matrix as float16
and multiply float32 inputs by it, widening as it goes, which halves those bytes while the
arithmetic, the state and the outputs stay float32. Unlike int8 dynamic quantisation it
takes no scale from the batch, so a row's result does not depend on the rows it was batched
with.

Measured on this project's 2-core CPU (one thread): the shipped GRU's step went from 1.08 to
0.51 ms at batch 1, 3.2 to 1.6 ms at batch 16, 7.0 to 5.0 ms at batch 64; the classifier's
LSTM at batch 32 and 64 was 10-20% faster. Dev accuracy and validation loss did not move
at the precision they are reported (docs/performance.md).

The kernels are the ones behind torch's dynamic quantisation (`torch.ops.quantized`), which
torch says it will move to torchao; where they are missing, `use_half_weights` answers False
and the net keeps its float32 weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["HalfWeightRNN", "use_half_weights"]


class HalfWeightRNN(nn.Module):
    """An eval-mode `nn.LSTM` or `nn.GRU` whose matrices are packed as float16 for fbgemm.

    `forward` takes what the module it replaces takes (a tensor, batch first, or a
    PackedSequence, with an optional state) and gives the same; `cell` runs one time step of
    one layer, as `torch.lstm_cell` / `torch.gru_cell` do. The float32 module is kept as
    `source` for its parameters (counts, `state_dict`), never for computing.
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        if not isinstance(rnn, nn.LSTM | nn.GRU) or (isinstance(rnn, nn.LSTM) and rnn.proj_size):
            raise TypeError("HalfWeightRNN takes an nn.LSTM or nn.GRU without projections")
        self.source = rnn
        self.lstm = isinstance(rnn, nn.LSTM)
        self.num_layers, self.hidden_size = rnn.num_layers, rnn.hidden_size
        self.bidirectional, self.batch_first = rnn.bidirectional, rnn.batch_first
        self._cells: list[tuple[Any, Any, Tensor, Tensor]] = []  # per layer and direction
        self._params: list[Any] = []  # the same, as whole-sequence cell parameters
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{layer}{suffix}").detach()
                                          for name in ("weight_ih", "weight_hh", "bias_ih",
                                                       "bias_hh"))
                ih, hh = _prepack(w_ih, b_ih), _prepack(w_hh, b_hh)
                self._cells.append((ih, hh, b_ih, b_hh))
                self._params.append(torch.ops.quantized.make_quantized_cell_params_fp16(ih, hh))

    def train(self, mode: bool = True) -> HalfWeightRNN:
        if mode:
            raise RuntimeError("HalfWeightRNN is for inference; train the float32 module")
        return super().train(False)

    def cell(self, layer: int, x: Tensor, hx: Tensor | tuple[Tensor, Tensor]) -> Any:
        """One step of one (forward) layer: `(h, c)` for an LSTM, `h` for a GRU."""
        directions = 2 if self.bidirectional else 1
        ih, hh, b_ih, b_hh = self._cells[layer * directions]
        if self.lstm:
            return torch.ops.quantized.quantized_lstm_cell_dynamic(x, hx, ih, hh, b_ih, b_hh)
        return torch.ops.quantized.quantized_gru_cell_dynamic(x, hx, ih, hh, b_ih, b_hh)

    def forward(self, input: Tensor | PackedSequence,
                hx: Tensor | tuple[Tensor, Tensor] | None = None) -> tuple[Any, Any]:
        packed = isinstance(input, PackedSequence)
        if isinstance(input, PackedSequence):
            data, batch_sizes = input.data, input.batch_sizes
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            batch = int(batch_sizes[0])
        else:
            data = input
            batch = input.size(0 if self.batch_first else 1)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = data.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            hx = (zeros, zeros) if self.lstm else zeros
        elif packed and sorted_indices is not None:  # the caller's rows, in packed order
            hx = (tuple(h.index_select(1, sorted_indices) for h in hx)  # type: ignore[assignment]
                  if isinstance(hx, tuple) else hx.index_select(1, sorted_indices))
        layers, bi = self.num_layers, self.bidirectional
        if self.lstm:
            assert isinstance(hx, tuple)
            # The overloads are named, not resolved (see the GRU's below).
            if packed:
                out, h, c = torch.ops.aten.quantized_lstm.data(
                    data, batch_sizes, hx, self._params, True, layers, 0.0, False, bi,
                    dtype=torch.float16, use_dynamic=True)
            else:
                out, h, c = torch.ops.aten.quantized_lstm.input(
                    data, hx, self._params, True, layers, 0.0, False, bi, self.batch_first,
                    dtype=torch.float16, use_dynamic=True)
            state: Any = (h, c)
        else:
            assert isinstance(hx, Tensor)
            # The overload named, not resolved: resolving tries the other one first, and its
            # failure formats every argument tensor into an error message.
            if packed:
                out, state = torch.ops.aten.quantized_gru.data(
                    data, batch_sizes, hx, self._params, True, layers, 0.0, False, bi)
            else:
                out, state = torch.ops.aten.quantized_gru.input(
                    data, hx, self._params, True, layers, 0.0, False, bi, self.batch_first)
        if not packed:
            return out, state
        if unsorted_indices is not None:
            state = (tuple(s.index_select(1, unsorted_indices) for s in state)
                     if isinstance(state, tuple) else state.index_select(1, unsorted_indices))
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), state


def _prepack(weight: Tensor, bias: Tensor) -> Any:
    """fbgemm's float16 copy of a matrix and its bias (raises where fbgemm is missing)."""
    return torch.ops.quantized.linear_prepack_fp16(weight, bias)


def use_half_weights(net: nn.Module) -> bool:
    """Swap the net's recurrent module (`net.rnn`) for a `HalfWeightRNN`, for inference on
    the CPU. False, and the net unchanged, where it does not apply: a vanilla RNN cell, a
    net on another device, or a torch without fbgemm's float16 kernels."""
    rnn = getattr(net, "rnn", None)
    if not isinstance(rnn, nn.LSTM | nn.GRU):
        return False
    if any(p.device.type != "cpu" for p in rnn.parameters()):
        return False
    try:
        half = HalfWeightRNN(rnn)
        agrees = _agrees(half, rnn)
    except (RuntimeError, AttributeError, NotImplementedError):  # no fbgemm, or no such op
        return False
    if not agrees:
        return False
    net.rnn = half
    return True


def _agrees(half: HalfWeightRNN, rnn: nn.LSTM | nn.GRU) -> bool:
    """Whether the float16 module answers a short sequence, and a first-layer step, as the
    float32 one does (to float16's precision): a platform whose kernels are missing or broken
    keeps float32, rather than failing a model at its first request."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, rnn.input_size, generator=generator)  # B T E
    h = torch.randn(2, rnn.hidden_size, generator=generator)
    first = x[:, 0]
    if not rnn.batch_first:
        x = x.transpose(0, 1)
    weights = [getattr(rnn, f"{name}_l0") for name in ("weight_ih", "weight_hh", "bias_ih",
                                                        "bias_hh")]
    with torch.inference_mode():
        pairs = [(half(x)[0], rnn(x)[0])]
        if half.lstm:
            pairs += zip(half.cell(0, first, (h, h)), torch.lstm_cell(first, (h, h), *weights),
                         strict=True)
        else:
            pairs.append((half.cell(0, first, h), torch.gru_cell(first, h, *weights)))
    return all(torch.allclose(a, b, atol=1e-2) for a, b in pairs)
