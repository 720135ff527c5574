"""Integrated gradients and occlusion of textrnn.attribution on small random classifiers."""

from __future__ import annotations

import pytest
import torch

from textrnn.attribution import integrated_gradients, logits_from_embeddings, occlusion
from textrnn.inference import classify_logits
from textrnn.nets import NetConfig, RNNClassifier


def _classifier(pooling: str, cell: str = "lstm") -> RNNClassifier:
    torch.manual_seed(1)
    net = RNNClassifier(NetConfig.from_dict({
        "task": "classification", "vocab_size": 40, "cell": cell, "embedding_dim": 8,
        "hidden_size": 6, "num_layers": 2, "bidirectional": True, "pooling": pooling,
        "num_labels": 3}))
    net.eval()
    return net


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "concat"])
def test_logits_from_embeddings_are_the_nets_logits(pooling: str) -> None:
    net = _classifier(pooling)
    ids = torch.randint(1, 40, (3, 7))  # B T
    with torch.no_grad():
        expected = net(ids, torch.full((3,), 7))
        got = logits_from_embeddings(net, net.embedding(ids))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_integrated_gradients_add_up_to_the_change_from_the_baseline(cell: str) -> None:
    net = _classifier("max", cell)
    ids = torch.randint(2, 40, (9,)).tolist()
    with torch.inference_mode():  # as on the service's inference thread
        result = integrated_gradients(net, ids, label=2, steps=256)
    assert result.words.shape == (9,) and result.baseline is not None
    assert float(result.words.sum()) == pytest.approx(result.log_prob - result.baseline, abs=0.01)
    expected = torch.log_softmax(classify_logits(net, [ids]), -1)[0, 2].item()
    assert result.log_prob == pytest.approx(expected, abs=1e-5)
    assert all(p.grad is None for p in net.parameters())  # nothing accumulates in the model


def test_occlusion_leaves_each_word_out_in_turn() -> None:
    net = _classifier("mean")
    ids = [5, 9, 11, 3]
    result = occlusion(net, ids, label=0)
    with torch.no_grad():
        full = torch.log_softmax(classify_logits(net, [ids]), -1)[0]
        for i in range(4):
            without = torch.log_softmax(classify_logits(net, [ids[:i] + ids[i + 1:]]), -1)[0]
            assert float(result.words[i]) == pytest.approx(float(full[0] - without[0]), abs=1e-6)
            assert result.without is not None and result.without[i] == int(without.argmax())
