"""--precision: fp32 is plain float32 training; bf16 autocast runs on the CPU; fp16 needs a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import tiny_classifier_args, tiny_lm_args
from tests.training.test_distributed import KINDS, _job
from training.cli import main as train_main
from training.device import PrecisionUnsupported, _cpu_bf16_runs
from training.distributed import Part
from training.train import TrainConfig, _layers, _param_groups, _Schedule, fit


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"max_steps": 12, "warmup_steps": 3, "lr": 0.01, "progress": False,
                          "patience": 0, "log_every": 3} | kw)


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_is_the_plain_float32_loop(kind: str, tmp_path: Path) -> None:
    fit(job := _job(kind, Part()), _cfg(precision="fp32"), tmp_path)
    # The same steps written out by hand: no autocast, no loss scaling, nothing else.
    ref = _job(kind, Part())
    cfg = _cfg()
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(_param_groups(_layers(ref), cfg), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(cfg, 12))
    batches = ref.batches(0)
    assert len(batches) > 12
    for batch in batches[:12]:
        loss, _ = ref.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(ref.net.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
    for key, value in ref.net.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(job.net.state_dict()[key], value), key


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"),
                    reason="this torch has no autocast on the CPU")
@pytest.mark.parametrize(("kind", "cell"), [("classify", "gru"), ("pretrain", "gru"),
                                            ("lm", "gru"), ("classify", "lstm")])
def test_bf16_autocast_trains_on_the_cpu(kind: str, cell: str, tmp_path: Path) -> None:
    if not _cpu_bf16_runs(cell.upper()):
        # oneDNN's bfloat16 LSTM needs CPU features (AVX-512 BF16, AMX) some CPUs lack
        with pytest.raises(PrecisionUnsupported, match="no bfloat16 LSTM kernel"):
            fit(_job(kind, Part(), cell), _cfg(precision="bf16"), tmp_path)
        return
    plain = fit(_job(kind, Part(), cell), _cfg(max_steps=30), tmp_path / "fp32")
    result = fit(job := _job(kind, Part(), cell), _cfg(max_steps=30, precision="bf16"),
                 tmp_path / "bf16")
    losses = [r["loss"] for r in result.history if "loss" in r and "eval" not in r]
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]
    state = job.net.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())  # the weights stay float32
    assert any(not torch.equal(v, plain.best_state[k]) for k, v in result.best_state.items())


def test_fp16_on_the_cpu_is_refused(lm_file: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = [*tiny_lm_args(lm_file, tmp_path / "models" / "lm"), "--precision", "fp16"]
    assert train_main(args) == 2
    assert "--precision fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu(precision: str, lm_file: Path,
                                  sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    gpu = ["--device", "cuda", "--precision", precision]
    lm = tmp_path / "models" / "lm"
    assert train_main(tiny_lm_args(lm_file, lm) + gpu) == 0
    sentiment = tmp_path / "models" / "sentiment"
    assert train_main(tiny_classifier_args(*sentiment_files, sentiment) + gpu) == 0
    for folder in (lm, sentiment):
        config = json.loads((folder / "config.json").read_text())
        assert config["training"]["precision"] == precision
        assert config["metrics"]
