"""Property-based fuzzing of the whole API from its OpenAPI schema (schemathesis), against a
real server: valid requests (every response valid against the schema, no valid request
refused) and invalid ones (refused with a documented 4xx), never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis.checks import positive_data_acceptance

from app.main import create_app
from app.schemas import ClassifyParameters, GenerateParameters
from app.settings import Settings
from tests.app.conftest import running_server

SPEC = create_app(Settings(models_dir=Path("/nonexistent"))).openapi()
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
CASES = sorted((method.upper(), path, mode) for path, item in SPEC["paths"].items()
               for method, operation in item.items() for mode in (POSITIVE, NEGATIVE)
               # invalid cases only where there is something to make invalid
               if mode == POSITIVE or "requestBody" in operation or operation.get("parameters"))
# Integers are taken as TGI takes them: written without a fraction. JSON Schema 2020-12 counts
# 2.0 as an integer and cannot say otherwise, so those spellings are left out of valid cases.
INTEGER_FIELDS = {name for model in (GenerateParameters, ClassifyParameters)
                  for name, info in model.model_fields.items()
                  if info.annotation in (int, int | None)}


def _whole_float_for_an_integer(value: Any) -> bool:
    if isinstance(value, dict):
        return any((k in INTEGER_FIELDS and isinstance(v, float))
                   or _whole_float_for_an_integer(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_whole_float_for_an_integer(v) for v in value)
    return False


# A conversation's rendered length limit (RNN_MAX_INPUT_CHARS) spans all its messages, which
# a schema cannot state: a long valid-looking conversation is rightly refused there.
# Likewise a label (/explain), a unit or layer (/inside/memory) and a marked span
# (/inside/units) are valid or not for a given model and text.
EXCLUDED = {path: [positive_data_acceptance] for path in (
    "/v1/chat/completions", "/explain", "/inside/memory", "/inside/units")}


@pytest.fixture(scope="module")
def fuzz_schema(models_dir: Path) -> Iterator[Any]:
    """The live schema of a real server (tiny models, small limits)."""
    app = create_app(Settings(models_dir=models_dir, max_new_tokens=64, max_inputs=8,
                              max_input_chars=500))
    with running_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.timeout(180)  # bounded: each operation's cases take seconds
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=str)
def test_operation_never_fails_and_matches_its_schema(fuzz_schema: Any, method: str,
                                                      path: str, mode: Any) -> None:
    operation = fuzz_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30 if mode == POSITIVE else 20, deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        if mode == POSITIVE:
            assume(not _whole_float_for_an_integer(case.body))
        case.call_and_validate(excluded_checks=EXCLUDED.get(path, []))

    check()
