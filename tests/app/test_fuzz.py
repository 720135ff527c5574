"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis): no 5xx,
and every response valid against the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server

OPERATIONS = sorted((method.upper(), path)
                    for path, item in create_app(Settings(models_dir=Path("/nonexistent")))
                    .openapi()["paths"].items() for method in item)


# A conversation's rendered length limit (RNN_MAX_INPUT_CHARS) spans all its messages, which
# a schema cannot state: a long valid-looking conversation is rightly refused there.
EXCLUDED = {"/v1/chat/completions": [positive_data_acceptance]}


@pytest.fixture(scope="module")
def fuzz_schema(models_dir: Path) -> Iterator[Any]:
    """The live schema of a real server (tiny models, small limits)."""
    app = create_app(Settings(models_dir=models_dir, max_new_tokens=64, max_inputs=8,
                              max_input_chars=500))
    with running_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_never_fails_and_matches_its_schema(fuzz_schema: Any, method: str,
                                                      path: str) -> None:
    operation = fuzz_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=EXCLUDED.get(path, []))

    check()
