"""Float16 recurrent weights for CPU inference: same answers as float32 to within float16's
rounding, independent of batch companions, and consistent between whole-sequence and
step-by-step reading."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from textrnn import halfweights
from textrnn.artifact import load_artifact
from textrnn.halfweights import HalfWeightRNN, use_half_weights
from textrnn.inference import classify_logits, sequence_logprobs
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net, count_parameters


def _net(task: str, cell: str, bidirectional: bool = False, pooling: str = "max") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_net(NetConfig(  # type: ignore[arg-type]
        task=task, vocab_size=40, cell=cell, embedding_dim=12, hidden_size=24,  # type: ignore[arg-type]
        num_layers=2, bidirectional=bidirectional, pooling=pooling,  # type: ignore[arg-type]
        num_labels=3 if task == "classification" else 0)).eval()


def _halved(net: torch.nn.Module) -> torch.nn.Module:
    half = copy.deepcopy(net)
    assert use_half_weights(half)
    assert isinstance(half.rnn, HalfWeightRNN)
    return half


SEQS = [[5, 9, 2, 7, 7, 3, 11, 4], [6, 1, 8], [12, 13, 14, 15, 16, 2], [9], [3, 3, 3, 3, 3, 3, 3, 3]]


@pytest.mark.parametrize(("cell", "bidirectional", "pooling"), [
    ("lstm", True, "max"), ("lstm", False, "concat"), ("gru", True, "last"), ("gru", False, "mean")])
def test_classifier_matches_float32_and_ignores_batch_companions(
        cell: str, bidirectional: bool, pooling: str) -> None:
    net = _net("classification", cell, bidirectional, pooling)
    half = _halved(net)
    assert isinstance(half, RNNClassifier)
    with torch.inference_mode():
        full, batched = classify_logits(net, SEQS), classify_logits(half, SEQS)  # type: ignore[arg-type]
        alone = torch.cat([classify_logits(half, [s]) for s in SEQS])
    # float16 keeps 11 significant bits: the weights move by 2**-12 relative, the logits less
    assert torch.allclose(batched, full, atol=1e-3, rtol=1e-3)
    assert not torch.equal(batched, full)  # the float16 path really ran
    # no scale is taken from the batch (int8 dynamic quantisation would fail this)
    assert torch.allclose(alone, batched, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_language_model_steps_agree_with_whole_sequence_reading(cell: str) -> None:
    net = _net("generation", cell)
    half = _halved(net)
    assert isinstance(net, CharLM) and isinstance(half, CharLM)
    ids = torch.tensor([(s * 3)[:3] for s in SEQS])  # B 3
    with torch.inference_mode():
        whole, state = half(ids)  # the state after the last token, read whole
        full, _ = net(ids)
        stepped = None
        for t in range(ids.size(1)):
            logits, stepped = half.step(ids[:, t], stepped)
        prefill_logits, prefill_state = half.prefill(ids, torch.full((len(SEQS),), 3))
        assert torch.allclose(whole, full, atol=1e-3, rtol=1e-3)
        assert torch.allclose(logits, whole[:, -1], atol=1e-5)
        assert torch.allclose(prefill_logits, whole[:, -1], atol=1e-5)
        for states in zip(*(s if isinstance(s, tuple) else (s,)
                            for s in (state, prefill_state, stepped)), strict=True):
            assert all(torch.allclose(states[0], other, atol=1e-5) for other in states[1:])
        # rows of different lengths: each row's state is taken after its own last token
        lengths = torch.tensor([len(s) for s in SEQS])
        padded = torch.tensor([s + [0] * (8 - len(s)) for s in SEQS])
        batch_logits, _ = half.prefill(padded, lengths)
        for row, seq in enumerate(SEQS):
            one, _ = half.prefill(torch.tensor([seq]), torch.tensor([len(seq)]))
            assert torch.allclose(one[0], batch_logits[row], atol=1e-6)
        assert torch.allclose(sequence_logprobs(half, SEQS), sequence_logprobs(net, SEQS),
                              atol=1e-3, rtol=1e-3)


def test_what_it_does_not_apply_to() -> None:
    vanilla = _net("classification", "rnn")
    assert not use_half_weights(vanilla)
    assert isinstance(vanilla.rnn, torch.nn.RNN)
    half = _halved(_net("generation", "gru"))
    with pytest.raises(RuntimeError, match="inference"):
        half.train()
    half.eval()  # still fine


def test_missing_kernels_leave_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(weight: torch.Tensor, bias: torch.Tensor) -> None:
        raise RuntimeError("Your CPU does not support FBGEMM.")

    monkeypatch.setattr(halfweights, "_prepack", unsupported)
    net = _net("classification", "lstm", True)
    assert not use_half_weights(net)
    assert isinstance(net.rnn, torch.nn.LSTM)


def test_kernels_that_answer_wrongly_leave_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    real = HalfWeightRNN.cell

    def off_by_a_little(self: HalfWeightRNN, layer: int, x: torch.Tensor, hx: object) -> object:
        out = real(self, layer, x, hx)  # type: ignore[arg-type]
        return tuple(o + 0.05 for o in out) if isinstance(out, tuple) else out + 0.05

    monkeypatch.setattr(HalfWeightRNN, "cell", off_by_a_little)
    for cell in ("lstm", "gru"):
        net = _net("generation", cell)
        assert not use_half_weights(net)
        assert not isinstance(net.rnn, HalfWeightRNN)


def test_load_artifact_reports_the_weights_it_holds(models_dir: Path) -> None:
    for name in ("sentiment", "shakespeare"):
        full = load_artifact(models_dir / name)
        half = load_artifact(models_dir / name, weights="float16")
        assert (full.weights, half.weights) == ("float32", "float16")
        assert half.parameters == full.parameters == count_parameters(full.net)
    with pytest.raises(ValueError, match="float16 or float32"):
        load_artifact(models_dir / "sentiment", weights="int8")
