"""The schedule fits the run (warm-up as a share of it, the decay ending when the run ends,
by steps or by time), a short run is warned about, a held-out dev set when there is no --dev
file, and what a run says: its first line, progress as log lines, a model card with no paths
of the machine."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.conftest import tiny_classifier_args
from textrnn.artifact import load_artifact
from training.cli import main as train_main
from training.data import Example, split_examples
from training.progress import Progress
from training.train import TrainConfig, _Schedule


def _peak_step(schedule: _Schedule, total: int) -> int:
    factors = [schedule(step) for step in range(total)]
    return factors.index(max(factors))


def test_the_warm_up_is_a_share_of_the_run() -> None:
    short = _Schedule(TrainConfig(), total=40)  # 300 rows, batch 64, 10 epochs: 40 steps
    assert short.warmup == 2 and short(1) == 1.0  # the peak, early
    long = _Schedule(TrainConfig(), total=10_000)
    assert long.warmup == 500
    assert _Schedule(TrainConfig(warmup_ratio=0.0), total=40)(0) == 1.0


def test_explicit_warm_up_steps_are_cut_to_half_the_run() -> None:
    assert _Schedule(TrainConfig(warmup_steps=100), total=40).warmup == 20
    assert _Schedule(TrainConfig(warmup_steps=20), total=40).warmup == 20  # at the limit
    assert _Schedule(TrainConfig(warmup_steps=21), total=40).warmup == 20  # one past
    assert _Schedule(TrainConfig(warmup_steps=100), total=1800).warmup == 100
    schedule = _Schedule(TrainConfig(warmup_steps=100), total=40)
    assert _peak_step(schedule, 40) == 19 and schedule(19) == 1.0


def test_the_decay_ends_at_max_steps() -> None:
    cfg = TrainConfig(max_steps=300)
    schedule = _Schedule(cfg, total=300)
    assert schedule(299) == pytest.approx(cfg.min_lr_ratio, abs=1e-3)


def test_the_decay_follows_the_clock_when_the_run_slows_down() -> None:
    cfg = TrainConfig(max_minutes=1.0, warmup_steps=10)
    schedule = _Schedule(cfg, total=100_000)
    for step in range(1, 201):  # fast at first: 100 steps a second, fitted at step 200
        schedule.observe(step, step / 100)
    assert schedule.fitted and schedule.total > 5000
    assert schedule(201) > 0.9
    # ...then ten times slower: by steps the decay would be a tenth of the way at the end.
    step = 200
    for seconds in range(3, 61):
        step += 10
        schedule.observe(step, float(seconds))
    assert step < schedule.total / 2
    assert schedule(step) == pytest.approx(cfg.min_lr_ratio, abs=1e-6)


def test_a_fitted_budget_cuts_a_long_warm_up() -> None:
    cfg = TrainConfig(max_minutes=0.1)  # 6 s, at 10 steps a second: about 50 steps
    schedule = _Schedule(cfg, total=10 * 1000)
    assert schedule.warmup == 500
    for step in range(1, 40):
        schedule.observe(step, step / 10)
    assert schedule.fitted and schedule.total < 60 and schedule.warmup <= 3


def test_a_short_run_is_warned_about(tmp_path: Path, sentiment_files: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_classifier_args(*sentiment_files, tmp_path / "models" / "c", steps=6)
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert "warning: this run takes 6 optimiser steps" in err and "fewer than 100" in err
    first = err.splitlines()[0]
    assert first.startswith("classify: 1 torch thread(s) (this machine has ")
    assert "work dir" in first and str(tmp_path / "models" / "c") in first


def test_progress_is_log_lines_when_the_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(total=40, initial=0, enabled=True, stream=out)
    for step in range(1, 41):
        bar.update(step, 0.5, 100.0) if step % 4 == 0 else bar.update(step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 20 and lines[0].startswith("step 2/40 (5%), ")
    assert lines[-1].startswith("step 40/40 (100%), loss 0.5000, 100 items/s, ")
    quiet = io.StringIO()
    Progress(total=40, initial=0, enabled=False, stream=quiet).update(2)
    assert quiet.getvalue() == ""


def test_dev_fraction_holds_out_a_stratified_share() -> None:
    examples = [Example(f"t{i}", "a" if i % 4 else "b", i) for i in range(100)]  # 75 a, 25 b
    train, dev = split_examples(examples, 0.2, seed=1)
    assert len(dev) == 20 and sum(ex.label == "b" for ex in dev) == 5
    assert {ex.line for ex in train} | {ex.line for ex in dev} == set(range(100))
    assert split_examples(examples, 0.2, seed=1) == (train, dev)
    assert split_examples(examples, 0.2, seed=2) != (train, dev)
    lone = [Example("x", "a", 1), Example("y", "b", 2), Example("z", "b", 3)]
    assert [ex.text for ex in split_examples(lone, 0.1, seed=0)[1]] == ["y"] or \
        [ex.text for ex in split_examples(lone, 0.1, seed=0)[1]] == ["z"]


def test_classify_without_dev_trains_on_a_held_out_share_and_the_card_has_no_local_paths(
        tmp_path: Path, sentiment_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)  # the data lies outside the working directory
    args = tiny_classifier_args(*sentiment_files, Path("models/c"), steps=20)
    dev = args.index("--dev")
    del args[dev:dev + 2]
    args[args.index("--work-dir") + 1] = "runs/c"
    assert train_main([*args, "--dev-fraction", "0.25"]) == 0
    assert "dev set: 150 of the 600 examples" in capsys.readouterr().err
    config = load_artifact(work / "models" / "c").config
    assert config["metrics"]["dev"]["examples"] == 150
    assert config["training"]["hyperparameters"]["dev_fraction"] == 0.25
    assert [d["path"] for d in config["training"]["data"]] == ["train.tsv"]
    card = (work / "models" / "c" / "README.md").read_text()
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(config)
    assert "into 2 labels (`negative`, `positive`)" in card and "Sentiment" not in card
