from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from textrnn.inference import classify_logits, sequence_logprobs
from textrnn.nets import (
    CELLS,
    POOLINGS,
    CharLM,
    NetConfig,
    RNNClassifier,
    _pack_ids,
    build_net,
    concat_states,
    index_state,
)


def _classifier(cell: str, bidirectional: bool, pooling: str = "max", layers: int = 2) -> RNNClassifier:
    torch.manual_seed(0)
    net = build_net(NetConfig(task="classification", vocab_size=30, cell=cell, embedding_dim=8,  # type: ignore[arg-type]
                              hidden_size=12, num_layers=layers, bidirectional=bidirectional,
                              dropout=0.2, pooling=pooling, num_labels=3))  # type: ignore[arg-type]
    assert isinstance(net, RNNClassifier)
    return net.eval()


def _lm(cell: str, tie: bool = False) -> CharLM:
    torch.manual_seed(0)
    net = build_net(NetConfig(task="generation", vocab_size=20, cell=cell,  # type: ignore[arg-type]
                              embedding_dim=16 if tie else 8, hidden_size=16, num_layers=2,
                              tie_weights=tie))
    assert isinstance(net, CharLM)
    return net.eval()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_classifier_answer_does_not_depend_on_padding(cell: str, bidirectional: bool,
                                                      pooling: str) -> None:
    net = _classifier(cell, bidirectional, pooling)
    seqs = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13]]
    with torch.inference_mode():
        batched = classify_logits(net, seqs)
        alone = torch.cat([classify_logits(net, [s]) for s in seqs])
    assert batched.shape == (3, 3)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_ids_packed_before_the_embedding_match_torchs_packing_of_the_embeddings() -> None:
    net = _classifier("lstm", True, layers=1)
    torch.manual_seed(1)
    lengths = torch.tensor([3, 7, 1, 7, 4, 2, 7, 5])  # ties included
    ids = torch.randint(1, 30, (8, 7)) * (torch.arange(7)[None, :] < lengths[:, None])
    tokens, batch_sizes, order, rows = _pack_ids(ids, lengths)
    theirs = pack_padded_sequence(net.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
    assert torch.equal(net.embedding(tokens), theirs.data)
    assert torch.equal(batch_sizes, theirs.batch_sizes) and torch.equal(order, theirs.sorted_indices)
    assert torch.equal(ids[rows, torch.cat([torch.full((int(n),), t) for t, n in enumerate(batch_sizes)])],
                       tokens)  # each token's row and step are where it came from
    # and the max-pooled classifier gives what padding with -inf and taking the max gives
    out, _ = net.rnn(theirs)
    padded, _ = pad_packed_sequence(out, batch_first=True, padding_value=float("-inf"))
    assert torch.equal(net(ids, lengths), net.head(padded.max(1).values))


def test_pooling_changes_what_the_head_sees() -> None:
    outs = {}
    for pooling in POOLINGS:
        net = _classifier("gru", True, pooling)
        with torch.inference_mode():
            outs[pooling] = classify_logits(net, [[3, 4, 5, 6]])
    assert not torch.allclose(outs["max"], outs["mean"])
    assert net.head.in_features == 3 * 2 * 12  # concat: last, mean, max of both directions


@pytest.mark.parametrize("cell", CELLS)
def test_lm_step_and_prefill_agree_with_a_full_forward(cell: str) -> None:
    net = _lm(cell)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        full, _ = net(ids)  # 1 T V
        state = net.initial_state(1)
        stepped = []
        for t in range(ids.size(1)):
            logits, state = net.step(ids[:, t], state)
            stepped.append(logits)
        prefill_logits, _ = net.prefill(torch.tensor([[1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6]]),
                                        torch.tensor([3, 6]))
    torch.testing.assert_close(torch.stack(stepped, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefill_logits[0], full[0, 2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefill_logits[1], full[0, 5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_state_rows_can_be_selected_and_joined(cell: str) -> None:
    net = _lm(cell)
    with torch.inference_mode():
        _, state = net(torch.tensor([[1, 2], [3, 4], [5, 6]]))
        picked = index_state(state, torch.tensor([2, 0]))
        joined = concat_states([index_state(state, torch.tensor([2])),
                                index_state(state, torch.tensor([0]))])
    first = picked[0] if isinstance(picked, tuple) else picked
    second = joined[0] if isinstance(joined, tuple) else joined
    assert first.shape == (2, 2, 16)
    torch.testing.assert_close(first, second)


def test_tied_weights_share_one_matrix() -> None:
    net = _lm("lstm", tie=True)
    assert net.head.weight is net.embedding.weight


def test_scoring_ignores_padding() -> None:
    net = _lm("lstm")
    with torch.inference_mode():
        batched = sequence_logprobs(net, [[1, 2, 3], [4, 5, 6, 7, 8], [9]])
        alone = torch.cat([sequence_logprobs(net, [s]) for s in ([1, 2, 3], [4, 5, 6, 7, 8], [9])])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert batched[2] == 0.0  # a single token has nothing to score


@pytest.mark.parametrize(("bad", "message"), [
    ({"cell": "transformer"}, "cell"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"dropout": 1.5}, "dropout"),
    ({"num_labels": 1}, "num_labels"),
])
def test_config_refuses_bad_values_by_name(bad: dict[str, object], message: str) -> None:
    base = {"task": "classification", "vocab_size": 10, "num_labels": 2} | bad
    with pytest.raises(ValueError, match=message):
        NetConfig(**base)  # type: ignore[arg-type]


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValueError, match="hiden_size"):
        NetConfig.from_dict({"task": "generation", "vocab_size": 10, "hiden_size": 3})
