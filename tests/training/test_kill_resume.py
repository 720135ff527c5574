"""A training run killed with SIGKILL and resumed ends with the weights of an unbroken run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import tiny_lm_args

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str]) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_matches_an_unbroken_run(lm_file: Path, tmp_path: Path) -> None:
    extra = ["--checkpoint-every", "10", "--max-steps", "120", "--eval-every", "40"]
    straight = tiny_lm_args(lm_file, tmp_path / "a" / "models" / "lm") + extra
    assert _cli(straight).wait(timeout=300) == 0

    broken = tiny_lm_args(lm_file, tmp_path / "b" / "models" / "lm") + extra
    checkpoint = tmp_path / "b" / "work" / "lm" / "checkpoint.pt"
    proc = _cli(broken)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() or torch.load(checkpoint, weights_only=True)["step"] < 50:
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "models" / "lm" / "model.safetensors").exists()
    assert _cli([*broken, "--resume"]).wait(timeout=300) == 0

    a = load_file(str(tmp_path / "a" / "models" / "lm" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "models" / "lm" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
