from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, settings_table

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_documented_settings_table_is_generated_from_the_class() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    block = text.split("<!-- settings:start -->\n")[1].split("<!-- settings:end -->")[0]
    assert block.strip() == settings_table().strip()


def test_environment_overrides_and_lists_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNN_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("RNN_API_KEYS", "a, b,,c")
    monkeypatch.setenv("RNN_DEVICE", "CUDA:1")
    s = Settings()
    assert s.max_batch_size == 8 and s.api_keys == ["a", "b", "c"] and s.device == "cuda:1"


@pytest.mark.parametrize(("name", "value"), [("RNN_DEVICE", "tpu"), ("RNN_MAX_BATCH_SIZE", "0"),
                                             ("RNN_LOG_FORMAT", "xml"), ("RNN_THREADS", "many")])
def test_bad_values_are_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch,
                                                       name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("RNN_").lower()):
        Settings()


def test_a_bad_setting_stops_the_server_with_a_clear_line() -> None:
    import os
    import subprocess
    import sys

    env = os.environ | {"RNN_MAX_BATCH_SIZE": "0", "RNN_DEVICE": "tpu"}
    result = subprocess.run([sys.executable, "-c", "import app.main"], env=env,
                            capture_output=True, text=True, cwd=CONFIGURATION.parents[1])
    assert result.returncode == 2
    assert "invalid setting RNN_MAX_BATCH_SIZE='0': Input should be greater than or equal to 1" \
        in result.stderr
    assert "invalid setting RNN_DEVICE='tpu'" in result.stderr
    assert "Traceback" not in result.stderr
