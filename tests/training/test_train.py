from __future__ import annotations

import fcntl
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_classifier_args, tiny_lm_args
from textrnn.artifact import load_artifact
from textrnn.inference import classify_logits
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net
from textrnn.tokenization import encode_batch
from training.classify import ClassifierJob
from training.cli import main as train_main
from training.seeds import main as seeds_main
from training.train import TrainConfig, WorkDirBusy, _param_groups, fit


def _job(seed: int = 0, num_layers: int = 1) -> ClassifierJob:
    rng = random.Random(seed)
    ids = [[rng.randint(2, 19) for _ in range(rng.randint(1, 8))] for _ in range(200)]
    labels = [int(any(t < 6 for t in s)) for s in ids]
    torch.manual_seed(seed)
    net = build_net(NetConfig(task="classification", vocab_size=20, cell="lstm", embedding_dim=8,
                              hidden_size=8, num_layers=num_layers, bidirectional=True,
                              dropout=0.2, num_labels=2))
    assert isinstance(net, RNNClassifier)
    return ClassifierJob(net, (ids, labels), (ids[:50], labels[:50]), ["no", "yes"], 16, seed,
                         word_dropout=0.1)


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"max_steps": 40, "eval_every": 10, "checkpoint_every": 10,
                          "warmup_steps": 5, "lr": 0.01, "progress": False, "patience": 0} | kw)


def test_loss_falls(tmp_path: Path) -> None:
    job = _job()
    result = fit(job, _cfg(max_steps=80), tmp_path)
    losses = [r["loss"] for r in result.history if "loss" in r and "eval" not in r]
    assert losses[-1] < losses[0] * 0.8
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in log) and any("items_per_s" in r for r in log)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9, "unfreeze_every": 15, "lr_decay": 2.0}])
def test_resume_after_interruption_reaches_the_same_weights(tmp_path: Path,
                                                            extra: dict[str, Any]) -> None:
    straight = fit(_job(), _cfg(**extra), tmp_path / "a")
    job = _job()
    real_loss, calls = job.loss, {"n": 0}

    def crashing_loss(batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 26:  # after the checkpoint at step 20, mid-way to the next
            raise _Crash
        return real_loss(batch)

    job.loss = crashing_loss  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        fit(job, _cfg(**extra), tmp_path / "b")
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG
    resumed = fit(_job(), _cfg(**extra), tmp_path / "b", resume=True)
    assert resumed.steps == straight.steps == 40
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key
    assert straight.best_eval == resumed.best_eval


def test_early_stopping_stops_when_the_dev_metric_stalls(tmp_path: Path) -> None:
    result = fit(_job(), _cfg(max_steps=400, eval_every=5, patience=2, lr=1e-9,
                              warmup_steps=1), tmp_path)
    assert result.stopped_because.startswith("early stop") and result.steps < 400


def _moved(job: ClassifierJob, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in job.net.named_parameters() if not torch.equal(p, before[n])}


def test_gradual_unfreezing_trains_the_head_alone_then_one_layer_more_each_period(
        tmp_path: Path) -> None:
    job = _job()
    names = [[n for n, _ in layer] for layer in job.layers()]
    assert names[0] == ["head.weight", "head.bias"] and names[-1] == ["embedding.weight"]
    assert sorted(n for layer in names for n in layer) == sorted(
        n for n, _ in job.net.named_parameters())
    before = {n: p.detach().clone() for n, p in job.net.named_parameters()}
    fit(job, _cfg(max_steps=10, unfreeze_every=10), tmp_path / "a")
    assert _moved(job, before) == set(names[0])  # steps 0-9: the head alone
    job = _job()
    fit(job, _cfg(max_steps=15, unfreeze_every=10), tmp_path / "b")
    assert _moved(job, before) == set(names[0]) | set(names[1])  # the LSTM from step 10
    job = _job()
    fit(job, _cfg(max_steps=25, unfreeze_every=10), tmp_path / "c")
    assert _moved(job, before) == set(before)  # the word vectors from step 20


def test_ema_keeps_the_average_without_changing_the_training(tmp_path: Path) -> None:
    plain, averaged = _job(), _job()
    kept = fit(plain, _cfg(eval_every=40), tmp_path / "a").best_state
    kept_average = fit(averaged, _cfg(eval_every=40, ema=0.9), tmp_path / "b").best_state
    for name, p in plain.net.named_parameters():  # the same steps were taken
        assert torch.equal(p, dict(averaged.net.named_parameters())[name])
        assert torch.equal(kept[name], p)  # one evaluation, at the end: the live weights
        assert not torch.equal(kept_average[name], p)  # ... or their average


def test_discriminative_rates_divide_by_the_decay_at_each_layer_down() -> None:
    job = _job(num_layers=2)
    net = job.net
    groups = _param_groups(job.layers(), TrainConfig(lr=0.01, lr_decay=2.0))
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(rate) == len(list(net.parameters()))
    assert rate[id(net.head.weight)] == rate[id(net.head.bias)] == 0.01
    assert rate[id(net.rnn.weight_hh_l1_reverse)] == rate[id(net.rnn.bias_ih_l1)] == 0.005
    assert rate[id(net.rnn.weight_ih_l0)] == rate[id(net.rnn.bias_hh_l0_reverse)] == 0.0025
    assert rate[id(net.embedding.weight)] == 0.00125
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(net.rnn.weight_hh_l0) in decay and id(net.embedding.weight) not in decay


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cli_trains_all_six_combinations_and_the_app_serves_them(
        tmp_path: Path, sentiment_files: tuple[Path, Path], lm_file: Path, cell: str) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    models = tmp_path / "models"
    clf_args = tiny_classifier_args(*sentiment_files, models / f"clf-{cell}", cell, steps=30)
    assert train_main([*clf_args, "--bidirectional"]) == 0
    assert train_main(tiny_lm_args(lm_file, models / f"lm-{cell}", cell, steps=30)) == 0
    for name in (f"clf-{cell}", f"lm-{cell}"):
        folder = models / name
        assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors",
                                                      "tokenizer.json", "README.md", "training.png"}
        config = json.loads((folder / "config.json").read_text())
        assert config["training"]["seed"] == 0 and config["training"]["data_sha256"]
        assert "python -m training" in (folder / "README.md").read_text()
    with TestClient(create_app(Settings(models_dir=models))) as client:
        assert client.get("/health/ready").status_code == 200
        r = client.post("/classify", json={"inputs": "great film", "model": f"clf-{cell}"})
        assert r.status_code == 200 and len(r.json()[0]) == 2
        r = client.post("/generate", json={"inputs": "ROMEO:", "model": f"lm-{cell}",
                                           "parameters": {"max_new_tokens": 5}})
        assert r.status_code == 200 and len(r.json()["generated_text"]) == 5


def test_export_then_load_gives_identical_logits(models_dir: Path, tmp_path: Path,
                                                 sentiment_files: tuple[Path, Path]) -> None:
    art = load_artifact(models_dir / "sentiment")
    assert isinstance(art.net, RNNClassifier)
    config = json.loads((models_dir / "sentiment" / "config.json").read_text())
    assert config["metrics"]["dev"]["accuracy"] > 0.9  # the tiny task is easy
    net = build_net(art.net_config)
    net.load_state_dict(load_file(str(models_dir / "sentiment" / "model.safetensors")))
    net.eval()
    seqs = encode_batch(art.tokenizer, ["a great film", "dull , boring plot"])
    with torch.inference_mode():
        assert torch.equal(classify_logits(art.net, seqs), classify_logits(net, seqs))  # type: ignore[arg-type]
        probs = torch.softmax(classify_logits(art.net, seqs), -1)
    assert probs[0, 1] > 0.5 > probs[1, 1]


def test_evaluate_reports_accuracy_and_bits_per_char(models_dir: Path, lm_file: Path,
                                                     sentiment_files: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["evaluate", str(models_dir / "sentiment"), "--data",
                       str(sentiment_files[1]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = json.loads((models_dir / "sentiment" / "config.json").read_text())
    assert report["accuracy"] == pytest.approx(config["metrics"]["dev"]["accuracy"])
    assert len(report["confusion_matrix"]) == 2
    assert train_main(["evaluate", str(models_dir / "shakespeare"), "--data", str(lm_file),
                       "--json"]) == 0
    lm = json.loads(capsys.readouterr().out)
    assert lm["bits_per_char"] == pytest.approx(lm["loss"] / math.log(2))
    assert lm["bits_per_char"] < math.log2(load_artifact(models_dir / "shakespeare").net_config.vocab_size)


def test_language_model_validation_is_recorded(models_dir: Path) -> None:
    art = load_artifact(models_dir / "shakespeare")
    assert isinstance(art.net, CharLM)
    val = art.config["metrics"]["validation"]
    assert val["read_as"] == "one stream, state carried"
    assert val["bits_per_char"] == pytest.approx(val["loss"] / math.log(2))


def test_bad_data_stops_the_cli_with_file_and_line(tmp_path: Path, sentiment_files: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\ttext\n1\tfine\n2\tstrange label\n")
    args = tiny_classifier_args(sentiment_files[0], bad, tmp_path / "m" / "x")
    assert train_main(args) == 2
    assert "bad.tsv, line 3: label '2' is not in the label set" in capsys.readouterr().err


@pytest.mark.gpu
def test_cli_trains_on_cuda_and_exports_cpu_loadable_folders(
        tmp_path: Path, sentiment_files: tuple[Path, Path], lm_file: Path) -> None:
    models = tmp_path / "models"
    assert train_main([*tiny_classifier_args(*sentiment_files, models / "clf"), "--device",
                       "cuda"]) == 0
    assert train_main([*tiny_lm_args(lm_file, models / "lm"), "--device", "cuda"]) == 0
    for name in ("clf", "lm"):
        art = load_artifact(models / name)  # loads on the CPU
        assert art.config["training"]["device"] == "cuda"
    assert load_artifact(models / "clf").config["metrics"]["dev"]["accuracy"] > 0.8


def test_a_second_run_on_the_same_work_dir_stops_at_once(tmp_path: Path) -> None:
    job = _job()
    with (tmp_path / ".lock").open("a+") as held:  # as a running fit holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(WorkDirBusy, match="in use by another training run"):
            fit(job, _cfg(max_steps=2), tmp_path)
    assert fit(job, _cfg(max_steps=2), tmp_path).steps == 2  # free again


def _seed_folders(files: tuple[Path, Path], root: Path, steps: int) -> list[Path]:
    """Tiny classifiers trained by the same command with seeds 1 and 2, as root/seed-N."""
    folders = []
    for seed in (1, 2):
        out = root / f"seed-{seed}"
        assert train_main([*tiny_classifier_args(*files, out, steps=steps),
                           "--seed", str(seed)]) == 0
        folders.append(out)
    return folders


def test_seeds_summary_goes_into_the_shipped_config_and_card(
        sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    folders = _seed_folders(sentiment_files, tmp_path / "models", steps=40)
    accuracy = [json.loads((f / "config.json").read_text())["metrics"]["dev"]["accuracy"]
                for f in folders]
    assert seeds_main([str(f) for f in folders]) == 0
    config = json.loads((folders[0] / "config.json").read_text())
    summary = config["metrics"]["dev, seeds 1,2 (same command)"]
    assert summary["mean_accuracy"] == pytest.approx(sum(accuracy) / 2)
    assert summary["accuracy_by_seed"] == accuracy
    assert "dev, seeds 1,2 (same command)" in (folders[0] / "README.md").read_text()
    assert load_artifact(folders[0]).config["metrics"]["dev"]["accuracy"] == accuracy[0]


def test_a_time_budget_fits_the_decay_into_it(tmp_path: Path) -> None:
    job = _job()
    real_loss = job.loss

    def slow_loss(batch: Any) -> Any:
        time.sleep(0.02)  # ~50 steps a second: 10,000 steps would take minutes
        return real_loss(batch)

    job.loss = slow_loss  # type: ignore[method-assign]
    cfg = _cfg(max_steps=10_000, max_minutes=0.05, eval_every=0, checkpoint_every=0)
    result = fit(job, cfg, tmp_path)
    assert result.stopped_because == "time budget spent"
    assert 40 < result.steps < 300 and result.wall_time_s <= 3.5
    lrs = [r["lr"] for r in result.history if "lr" in r]
    assert lrs[-1] < 0.2 * cfg.lr  # decayed to (near) its floor, not cut off at the top


def test_seeds_ship_copies_the_first_folder_under_its_new_name(
        sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    folders = _seed_folders(sentiment_files, tmp_path / "runs", steps=20)
    shipped = tmp_path / "models" / "sentiment"
    shipped.mkdir(parents=True)
    (shipped / "stale.txt").write_text("from an earlier model")
    assert seeds_main([*map(str, folders), "--ship", str(shipped)]) == 0
    config = json.loads((shipped / "config.json").read_text())
    assert config["name"] == "sentiment" and "dev, seeds 1,2 (same command)" in config["metrics"]
    assert (shipped / "README.md").read_text().startswith("# sentiment")
    assert not (shipped / "stale.txt").exists()
    source = json.loads((folders[0] / "config.json").read_text())
    assert source["name"] == "seed-1" and "dev, seeds 1,2 (same command)" not in source["metrics"]
    assert load_artifact(shipped).config["metrics"]["dev"] == source["metrics"]["dev"]
