"""Every training command of README.md and docs/training.md runs as written, in order, on the
sample data of a fresh clone (shortened by flags appended after it: later flags win)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from training.cli import main as train_main

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {".venv/bin/textrnn-train": 1, ".venv/bin/python": 3}  # words before the command
SHORT = ["--max-steps", "3", "--embedding-dim", "8", "--hidden-size", "8", "--threads", "1",
         "--no-progress", "--eval-every", "0", "--patience", "0"]


def documented_commands(page: Path) -> list[list[str]]:
    """The training commands of a page's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.startswith((".venv/bin/textrnn-train ", ".venv/bin/python -m training ")):
                continue
            words = shlex.split(line, comments=True)
            commands.append(words[PROGRAMS[words[0]]:])
    return commands


def test_textrnn_train_is_the_installed_name_of_the_same_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["textrnn-train"] == "training.console:main"


@pytest.mark.parametrize("page", ["README.md", "docs/training.md"])
def test_the_documented_commands_run_on_the_sample_data(
        page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    commands = documented_commands(ROOT / page)
    assert [c[0] for c in commands][:3] == ["classify", "lm", "evaluate"]
    (tmp_path / "data").symlink_to(ROOT / "data")  # a clone's data/, models/ of its own
    monkeypatch.chdir(tmp_path)
    for command in commands:
        extra = SHORT if command[0] != "evaluate" else []
        assert train_main(command + extra) == 0, shlex.join(command)
        out = capsys.readouterr().out
        if command[0] == "evaluate":
            assert "accuracy: " in out and "confusion_matrix: " in out
    outs = [Path(c[c.index("--out") + 1]) for c in commands if "--out" in c]
    assert all(out.exists() for out in outs)
    # Every model folder the commands wrote loads in the server's way, beside the shipped ones.
    assert all((out / "config.json").is_file() for out in outs if out.parts[0] == "models")
