from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from textrnn.artifact import ArtifactError, load_artifact, save_artifact
from textrnn.inference import classify_logits
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net
from textrnn.tokenization import build_char_tokenizer, build_word_tokenizer, encode_batch

TEXTS = ["a fine film", "a dull film", "fine"]


def _save_classifier(folder: Path) -> RNNClassifier:
    tok = build_word_tokenizer(TEXTS)
    torch.manual_seed(0)
    net = build_net(NetConfig(task="classification", vocab_size=tok.get_vocab_size(), cell="gru",
                              embedding_dim=8, hidden_size=8, bidirectional=True, num_labels=2))
    assert isinstance(net, RNNClassifier)
    save_artifact(folder, net.eval(), tok, {"labels": ["negative", "positive"]})
    return net


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, RNNClassifier]:
    folder = tmp_path / "clf"
    return folder, _save_classifier(folder)


def test_round_trip_gives_identical_logits(saved: tuple[Path, RNNClassifier]) -> None:
    folder, net = saved
    art = load_artifact(folder)
    assert art.name == "clf" and art.task == "classification" and art.labels == ["negative", "positive"]
    assert not art.net.training
    seqs = encode_batch(art.tokenizer, TEXTS)
    with torch.inference_mode():
        assert torch.equal(classify_logits(net, seqs), classify_logits(art.net, seqs))


def test_the_weights_are_as_readable_as_the_other_files(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == \
        (folder / "tokenizer.json").stat().st_mode & 0o777
    assert (folder / "model.safetensors").stat().st_mode & 0o044  # group and others may read


def test_tied_language_model_round_trips(tmp_path: Path) -> None:
    tok = build_char_tokenizer("hello world")
    net = build_net(NetConfig(task="generation", vocab_size=tok.get_vocab_size(), cell="lstm",
                              embedding_dim=8, hidden_size=8, tie_weights=True))
    assert isinstance(net, CharLM)
    save_artifact(tmp_path / "lm", net, tok)
    assert "head.weight" not in load_file(str(tmp_path / "lm" / "model.safetensors"))
    art = load_artifact(tmp_path / "lm")
    assert isinstance(art.net, CharLM) and art.net.head.weight is art.net.embedding.weight
    torch.testing.assert_close(art.net.embedding.weight, net.embedding.weight)


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_wrong_format_version_is_refused(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    _edit_config(folder, format_version=99)
    with pytest.raises(ArtifactError, match="format_version 99 is not supported") as info:
        load_artifact(folder)
    assert str(folder) in str(info.value)


def test_flipped_weight_byte_is_caught(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(folder)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(saved: tuple[Path, RNNClassifier], missing: str) -> None:
    folder, _ = saved
    (folder / missing).unlink()
    with pytest.raises(ArtifactError, match=f"missing {missing}"):
        load_artifact(folder)


def test_shape_mismatch_is_reported(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    _edit_config(folder, architecture=config["architecture"] | {"hidden_size": 9})
    with pytest.raises(ArtifactError, match="do not fit the architecture"):
        load_artifact(folder)


def test_extra_tensor_is_refused_by_strict_loading(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    weights = load_file(str(folder / "model.safetensors"))
    save_file(weights | {"surprise": torch.zeros(2)}, str(folder / "model.safetensors"))
    from textrnn.artifact import sha256_file
    _edit_config(folder, weights_sha256=sha256_file(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="surprise"):
        load_artifact(folder)


def test_tokenizer_and_embedding_sizes_must_agree(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    build_word_tokenizer(["many other words entirely here now"]).save(str(folder / "tokenizer.json"))
    with pytest.raises(ArtifactError, match="tokenizer has 8 entries but the embedding has 6 rows"):
        load_artifact(folder)


def test_broken_tokenizer_and_config_are_reported(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"cannot read tokenizer\.json"):
        load_artifact(folder)
    (folder / "config.json").write_text("[1, 2")
    with pytest.raises(ArtifactError, match=r"cannot read config\.json"):
        load_artifact(folder)


def test_label_count_must_match_outputs(saved: tuple[Path, RNNClassifier]) -> None:
    folder, _ = saved
    _edit_config(folder, labels=["a", "b", "c"])
    with pytest.raises(ArtifactError, match="3 labels listed but the net has 2 outputs"):
        load_artifact(folder)
