"""The step-by-step cells of textrnn.memory against torch's own, and the AUC ranking."""

from __future__ import annotations

import pytest
import torch

from textrnn.halfweights import use_half_weights
from textrnn.memory import SERIES, rank_units, trace_layer, units_of
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net


def _net(cell: str, task: str, layers: int, bidirectional: bool) -> RNNClassifier | CharLM:
    torch.manual_seed(0)
    config = NetConfig.from_dict({"task": task, "vocab_size": 30, "cell": cell, "embedding_dim": 6,
                                  "hidden_size": 5, "num_layers": layers,
                                  "bidirectional": bidirectional,
                                  "num_labels": 2 if task == "classification" else 0})
    net = build_net(config)
    net.eval()
    return net


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(("task", "bidirectional"),
                         [("generation", False), ("classification", True)])
def test_every_layer_matches_torchs_outputs_and_final_states(cell: str, task: str,
                                                             bidirectional: bool) -> None:
    net = _net(cell, task, 2, bidirectional)
    ids = torch.randint(1, 30, (17,))
    with torch.no_grad():
        out, state = net.rnn(net.embedding(ids)[None])  # 1 T D*H
    h_n = state[0] if isinstance(state, tuple) else state  # L*D 1 H
    directions = 2 if bidirectional else 1
    hidden = 5
    for layer in range(2):
        trace = trace_layer(net, ids, layer)
        assert set(trace.series) == set(SERIES[cell])
        got = trace.series["hidden"]  # T D*H
        assert got.shape == (17, units_of(net))
        # The forward direction ends at the last step, the reverse one at the first.
        torch.testing.assert_close(got[-1, :hidden], h_n[layer * directions, 0], atol=1e-5, rtol=0)
        if bidirectional:
            torch.testing.assert_close(got[0, hidden:], h_n[layer * 2 + 1, 0], atol=1e-5, rtol=0)
        if cell == "lstm":
            c_n = state[1]
            torch.testing.assert_close(trace.series["cell"][-1, :hidden], c_n[layer * directions, 0],
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.series["hidden"], out[0], atol=1e-5, rtol=0)


def test_gates_rebuild_the_next_state() -> None:
    net = _net("lstm", "generation", 1, False)
    series = trace_layer(net, torch.randint(1, 30, (9,)), 0).series
    c = series["cell"]
    rebuilt = series["forget"][1:] * c[:-1] + series["input"][1:] * series["candidate"][1:]
    torch.testing.assert_close(rebuilt, c[1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(series["output"] * torch.tanh(c), series["hidden"], atol=1e-6, rtol=0)
    for gate in ("input", "forget", "output"):
        assert series[gate].min() >= 0 and series[gate].max() <= 1


def test_half_weight_nets_are_traced_with_their_float32_weights() -> None:
    net = _net("gru", "generation", 1, False)
    ids = torch.randint(1, 30, (8,))
    before = trace_layer(net, ids, 0).series["hidden"]
    if not use_half_weights(net):
        pytest.skip("no float16 kernels here")
    torch.testing.assert_close(trace_layer(net, ids, 0).series["hidden"], before)


def test_auc_ranks_separating_units_first_with_ties_counted_half() -> None:
    inside = torch.tensor([False, True, True, False, False, True])
    values = torch.stack([
        inside.float(),                              # perfectly higher inside: 1
        -inside.float(),                             # perfectly lower inside: 0
        torch.zeros(6),                              # all tied: 0.5
        torch.tensor([1.0, 2.0, 0.0, 3.0, 0.5, 4.0]),  # inside 2, 0, 4 vs outside 1, 3, 0.5
    ], dim=1)  # T U
    auc = rank_units(values, inside)
    # Unit 3: 2 beats 1 and 0.5; 0 beats none; 4 beats all three: 5 of 9.
    torch.testing.assert_close(auc, torch.tensor([1.0, 0.0, 0.5, 5 / 9]))
    with pytest.raises(ValueError, match="inside and one outside"):
        rank_units(values, torch.ones(6, dtype=torch.bool))
