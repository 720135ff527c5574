"""Pretraining the classifier's encoder as a bidirectional LM, and initialising from it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import sentiment_rows, tiny_classifier_args, write_tsv
from textrnn.nets import NetConfig, RNNClassifier, build_net
from training.cli import main as train_main
from training.pretrain import BiLM, BiLMJob, chunk_sentences, load_encoder
from training.train import TrainConfig, fit


def test_chunks_hold_whole_sentences_up_to_the_length() -> None:
    tokens = ["a", "b", ".", "c", "d", "e", "!", "f", "g", "h", "i", "j", "k", "?", "l"]
    ids = list(range(len(tokens)))
    assert chunk_sentences(tokens, ids, 6) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11, 12],
                                               [13, 14]]
    assert chunk_sentences(tokens, ids, 100) == [ids]
    assert chunk_sentences(tokens[:3], ids[:3], 2) == [[0, 1]]  # the 1-token rest is dropped


def _bilm_loss(seqs: list[list[int]], vocab: int) -> float:
    torch.manual_seed(0)
    encoder = build_net(NetConfig(task="classification", vocab_size=vocab, cell="gru",
                                  embedding_dim=16, hidden_size=32, bidirectional=True,
                                  num_labels=2))
    assert isinstance(encoder, RNNClassifier)
    job = BiLMJob(BiLM(encoder, [8]), (seqs[:400], None), (seqs[400:], None), 32, 0)
    cfg = TrainConfig(max_steps=150, eval_every=150, lr=0.01, warmup_steps=5, patience=0,
                      checkpoint_every=0, progress=False)
    return float(fit(job, cfg, Path(f"/tmp/bilm-{id(seqs)}")).best_eval["loss"])


def test_each_direction_learns_its_neighbour_and_never_sees_its_target() -> None:
    rng = random.Random(0)
    vocab = 24
    # Counting sequences: the previous word gives the next and the next the previous.
    counting = [[2 + (s + i) % 22 for i in range(rng.randint(4, 12))] for s in
                (rng.randrange(22) for _ in range(480))]
    assert _bilm_loss(counting, vocab) < 0.5
    # Independent random words: nothing to learn, unless a direction could see its target.
    noise = [[rng.randrange(2, vocab) for _ in range(rng.randint(4, 12))] for _ in range(480)]
    assert _bilm_loss(noise, vocab) > math.log(22) - 0.15


def test_bidirectional_two_layer_encoders_are_refused() -> None:
    encoder = build_net(NetConfig(task="classification", vocab_size=30, bidirectional=True,
                                  num_layers=2, num_labels=2))
    assert isinstance(encoder, RNNClassifier)
    with pytest.raises(ValueError, match="one layer"):
        BiLM(encoder, [10])


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("pretrain")
    docs = [(label, " . ".join(text for _, text in sentiment_rows(4, seed)) + " .")
            for seed, (label, _) in enumerate(sentiment_rows(150, 7))]
    corpus = write_tsv(d / "reviews.tsv", docs)
    train, dev = write_tsv(d / "train.tsv", sentiment_rows(300, 1)), write_tsv(
        d / "dev.tsv", sentiment_rows(80, 2))
    out = d / "encoder.pt"
    assert train_main(["pretrain", "--text", str(corpus), "--label-column", "label",
                       "--vocab-text", str(train), "--min-frequency", "1", "--cell", "lstm",
                       "--embedding-dim", "16", "--hidden-size", "16",
                       "--batch-size", "16", "--max-steps", "40", "--eval-every", "20",
                       "--val-fraction", "0.1", "--warmup-steps", "5", "--lr", "0.01",
                       "--no-progress", "--out", str(out), "--work-dir", str(d / "work")]) == 0
    return out, train, dev


def _from_encoder_args(train: Path, dev: Path, out: Path) -> list[str]:
    """A tiny classifier run's arguments without the sizes (taken from the encoder instead)."""
    args = tiny_classifier_args(train, dev, out, steps=20)
    for flag in ("--embedding-dim", "--hidden-size"):
        i = args.index(flag)
        del args[i:i + 2]
    return args


def test_pretrain_writes_an_encoder_with_its_provenance(encoder_file: tuple[Path, Path, Path]
                                                        ) -> None:
    data = load_encoder(encoder_file[0])
    assert data["architecture"]["bidirectional"] and data["architecture"]["hidden_size"] == 16
    prov = data["provenance"]
    assert prov["command"].startswith("python -m training pretrain")
    assert len(prov["data"]) == 2 and all(len(d["sha256"]) == 64 for d in prov["data"])
    assert prov["validation"]["loss"] < math.log(data["architecture"]["vocab_size"])
    assert "label_loss" in prov["validation"]
    # the default cluster bounds (2000,8000) do not fit this small vocabulary: one remains
    vocab = data["architecture"]["vocab_size"]
    assert prov["hyperparameters"]["cutoffs"] == str(vocab // 2)


def test_classifier_starts_from_the_encoder(encoder_file: tuple[Path, Path, Path],
                                            tmp_path: Path) -> None:
    enc_path, train, dev = encoder_file
    out = tmp_path / "models" / "clf"
    args = _from_encoder_args(train, dev, out)
    args[args.index("--lr") + 1] = "0"  # nothing moves: the weights are the encoder's
    assert train_main([*args, "--init-from", str(enc_path)]) == 0
    encoder = load_encoder(enc_path)
    weights = load_file(str(out / "model.safetensors"))
    for name in ("embedding.weight", "rnn.weight_hh_l0_reverse"):
        assert torch.equal(weights[name], encoder["state_dict"][name])
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"]["bidirectional"] is True
    assert config["training"]["hyperparameters"]["pretraining"]["command"].startswith(
        "python -m training pretrain")
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == json.loads(
        encoder["tokenizer"])["model"]["vocab"]


def test_conflicting_architecture_flags_are_refused(encoder_file: tuple[Path, Path, Path],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    enc_path, train, dev = encoder_file
    args = tiny_classifier_args(train, dev, tmp_path / "m" / "clf")  # --hidden-size 16 matches
    args[args.index("--embedding-dim") + 1] = "32"
    assert train_main([*args, "--init-from", str(enc_path)]) == 2
    assert "error: --embedding-dim 32 differs" in capsys.readouterr().err


def test_keep_head_starts_from_the_encoders_label_head(encoder_file: tuple[Path, Path, Path],
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    enc_path, train, dev = encoder_file
    out = tmp_path / "models" / "clf"
    args = _from_encoder_args(train, dev, out)
    args[args.index("--lr") + 1] = "0"
    assert train_main([*args, "--init-from", str(enc_path), "--keep-head"]) == 0
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["head.weight"], load_encoder(enc_path)["state_dict"]["head.weight"])
    other = write_tsv(tmp_path / "three.tsv", [("0", "a"), ("1", "b"), ("2", "c")])
    three = tiny_classifier_args(other, dev, tmp_path / "m" / "x")
    three[three.index("--label-names") + 1] = "a,b,c"
    three += ["--labels", "0,1,2", "--init-from", str(enc_path), "--keep-head"]
    assert train_main(three) == 2
    assert "error: --keep-head needs the encoder's labels" in capsys.readouterr().err


def test_pretrain_refuses_a_validation_fraction_outside_0_1(
        encoder_file: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("1.5", "0"):
        with pytest.raises(SystemExit) as stop:
            train_main(["pretrain", "--text", str(encoder_file[1]), "--val-fraction", bad,
                        "--out", str(tmp_path / "e.pt")])
        assert stop.value.code == 2
        assert "--val-fraction: " in capsys.readouterr().err


def test_a_frozen_embedding_keeps_the_encoders_vectors(encoder_file: tuple[Path, Path, Path],
                                                       tmp_path: Path) -> None:
    enc_path, train, dev = encoder_file
    out = tmp_path / "models" / "clf"
    args = _from_encoder_args(train, dev, out)
    assert train_main([*args, "--init-from", str(enc_path), "--freeze-embedding"]) == 0
    weights, encoder = load_file(str(out / "model.safetensors")), load_encoder(enc_path)
    assert torch.equal(weights["embedding.weight"], encoder["state_dict"]["embedding.weight"])
    assert not torch.equal(weights["rnn.weight_hh_l0"], encoder["state_dict"]["rnn.weight_hh_l0"])
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["hyperparameters"]["freeze_embedding"] is True
