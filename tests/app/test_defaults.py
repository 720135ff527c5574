"""Each task's default model is named, and a folder added beside the served ones never changes
what a request without "model" gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import pick_default
from app.settings import Settings


class _Entry:
    """What pick_default reads of a model entry."""

    def __init__(self, name: str, task: str, created_at: str = "2026-01-01T00:00:00+00:00",
                 **config: Any) -> None:
        self.name, self.task = name, task
        self.artifact = type("A", (), {"config": {"created_at": created_at} | config})()


def _pick(task: str, entries: list[_Entry], configured: str | None = None) -> str | None:
    return pick_default(task, configured, entries)  # type: ignore[arg-type]


def test_the_rule_setting_then_marker_then_shipped_then_only_then_oldest() -> None:
    shipped = [_Entry("sentiment", "classification", "2026-03-01T00:00:00+00:00"),
               _Entry("shakespeare", "generation", "2026-03-01T00:00:00+00:00")]
    older = _Entry("aardvark", "classification", "2025-01-01T00:00:00+00:00")
    assert _pick("classification", [older, *shipped]) == "sentiment"
    assert _pick("generation", [older, *shipped]) == "shakespeare"
    assert _pick("classification", [older, *shipped], configured="aardvark") == "aardvark"
    marked = _Entry("zebra", "classification", default=True)
    assert _pick("classification", [older, *shipped, marked]) == "zebra"
    assert _pick("classification", [older, *shipped, marked], configured="sentiment") == "sentiment"
    # Without the shipped model: the only one, else the one created first, whatever its name.
    assert _pick("classification", [_Entry("mine", "classification"), shipped[1]]) == "mine"
    newer = _Entry("a-new", "classification", "2026-06-01T00:00:00+00:00")
    assert _pick("classification", [newer, _Entry("mine", "classification")]) == "mine"
    tie = [_Entry("b", "classification"), _Entry("a", "classification")]
    assert _pick("classification", tie) == "a"
    assert _pick("generation", [older]) is None


def _x_model(client: TestClient, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-model"].split("@")[0]


def test_a_folder_that_sorts_first_changes_no_default(models_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    # Two new models named to sort before the shipped ones, created after them.
    for task_folder, new in (("sentiment", "a-mine"), ("shakespeare", "a-my-lm")):
        shutil.copytree(models / task_folder, models / new)
        config = json.loads((models / new / "config.json").read_text())
        config["created_at"] = "2999-01-01T00:00:00+00:00"
        (models / new / "config.json").write_text(json.dumps(config))
    with TestClient(create_app(Settings(models_dir=models, generation_worker="thread"))) as c:
        assert c.get("/models").json()["defaults"] == {"classification": "sentiment",
                                                        "generation": "shakespeare"}
        assert _x_model(c, "/classify", {"inputs": "a superb film"}) == "sentiment"
        assert _x_model(c, "/score", {"inputs": "ROMEO:"}) == "shakespeare"
        assert _x_model(c, "/generate", {"inputs": "ROMEO:",
                                         "parameters": {"max_new_tokens": 2}}) == "shakespeare"
