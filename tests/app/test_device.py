"""RNN_DEVICE: auto, cpu, cuda[:n]. The GPU tests run only where torch sees a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import resolve_device
from app.settings import Settings


def test_auto_picks_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_fails_clearly() -> None:
    with pytest.raises(ValueError, match="RNN_DEVICE=cuda but torch sees no CUDA device"):
        resolve_device("cuda")


def _answers(models_dir: Path, device: str) -> tuple[list[float], str, float]:
    with TestClient(create_app(Settings(models_dir=models_dir, device=device))) as client:
        scores = [x["score"] for x in
                  client.post("/classify", json={"inputs": "a great film"}).json()[0]]
        text = client.post("/generate", json={"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": 30, "seed": 1, "temperature": 0.8}}).json()["generated_text"]
        logp = client.post("/score", json={"inputs": "ROMEO: But soft"}).json()[0]["log_prob"]
    return scores, text, logp


@pytest.mark.gpu
def test_cuda_serves_the_same_answers_as_the_cpu(models_dir: Path) -> None:
    cpu, gpu = _answers(models_dir, "cpu"), _answers(models_dir, "cuda")
    assert gpu[0] == pytest.approx(cpu[0], abs=1e-4)
    assert gpu[2] == pytest.approx(cpu[2], rel=1e-4)
    assert len(gpu[1]) == 30
