"""Shared fixtures: small data sets written by the tests and tiny models trained on them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from training.cli import main as train_main

POSITIVE = ["great", "wonderful", "moving", "brilliant", "gripping", "beautiful", "funny", "superb"]
NEGATIVE = ["awful", "dull", "boring", "lifeless", "tedious", "bad", "clumsy", "dreadful"]
FILLER = ["the", "film", "movie", "was", "a", "story", "quite", "really", "and", "plot", "acting",
          "it", "'s", "very", "this", "cast"]

LM_TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
    "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
    "ROMEO:\nShall I hear more, or shall I speak at this?\n\n"
    "JULIET:\nWhat's in a name? That which we call a rose\nBy any other word would smell as sweet.\n\n"
)


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Synthetic labelled sentences: the label follows the sentiment word in each."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice("01")
        word = rng.choice(POSITIVE if label == "1" else NEGATIVE)
        words = rng.choices(FILLER, k=rng.randint(2, 9))
        words.insert(rng.randint(0, len(words)), word)
        rows.append((label, " ".join(words)))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A label/text TSV file like SST-2's."""
    path.write_text("label\ttext\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, dev) TSV files of synthetic sentiment data."""
    d = tmp_path_factory.mktemp("sentiment-data")
    return (write_tsv(d / "train.tsv", sentiment_rows(600, 1)),
            write_tsv(d / "dev.tsv", sentiment_rows(120, 2)))


@pytest.fixture(scope="session")
def lm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small plain-text corpus."""
    path = tmp_path_factory.mktemp("lm-data") / "text.txt"
    path.write_text(LM_TEXT * 30, encoding="utf-8")
    return path


def tiny_classifier_args(train: Path, dev: Path, out: Path, cell: str = "lstm",
                         steps: int = 120) -> list[str]:
    """CLI arguments for a seconds-long classifier run."""
    return ["classify", "--train", str(train), "--dev", str(dev), "--cell", cell,
            "--label-names", "negative,positive", "--embedding-dim", "16", "--hidden-size", "16",
            "--dropout", "0.1", "--batch-size", "16", "--max-steps", str(steps),
            "--eval-every", "40", "--warmup-steps", "10", "--lr", "0.01", "--no-progress",
            "--threads", "1",
            "--out", str(out), "--work-dir", str(out.parent.parent / "work" / out.name)]


def tiny_lm_args(text: Path, out: Path, cell: str = "gru", steps: int = 60) -> list[str]:
    """CLI arguments for a seconds-long language-model run."""
    return ["lm", "--text", str(text), "--cell", cell, "--embedding-dim", "16",
            "--hidden-size", "32", "--dropout", "0.0", "--bptt", "32", "--streams", "8",
            "--max-steps", str(steps), "--eval-every", "30", "--warmup-steps", "5",
            "--lr", "0.01", "--no-progress", "--threads", "1", "--out", str(out),
            "--work-dir", str(out.parent.parent / "work" / out.name)]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, sentiment_files: tuple[Path, Path],
               lm_file: Path) -> Path:
    """A models folder with a tiny trained classifier `sentiment` and LM `shakespeare`."""
    root = tmp_path_factory.mktemp("trained")
    models = root / "models"
    assert train_main(tiny_classifier_args(*sentiment_files, models / "sentiment")) == 0
    assert train_main(tiny_lm_args(lm_file, models / "shakespeare")) == 0
    return models


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
