"""One request's bytes never fail another's: an attacker among well-behaved concurrent clients
on every batched route, against a real uvicorn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server, slowed

# A server fault's body: both conventions' fields, and nothing of the fault itself.
INTERNAL = {"detail": "internal error", "error": "internal error", "error_type": "generation"}

LONE = '"\\ud800"'  # a JSON string holding a lone surrogate
GOOD: dict[str, dict[str, Any]] = {
    "/classify": {"inputs": ["a gripping, beautiful film", "dull"]},
    "/score": {"inputs": ["To be, or not to be", "ROMEO:"]},
    "/generate": {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 8, "seed": 3}},
    "/generate_stream": {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 8, "seed": 3}},
}
TEXT_ATTACKS = [f'{{"inputs": {LONE}}}', f'{{"inputs": ["fine", "a{LONE[1:]}]}}',
                f'{{"inputs": "x", "model": {LONE}}}', f'{{"inputs": "x", {LONE}: 1}}']
GEN_ATTACKS = [f'{{"inputs": "RO{LONE[1:]}}}', f'{{"inputs": "x", "model": {LONE}}}',
               f'{{"inputs": "x", "parameters": {{"stop": [{LONE}]}}}}',
               f'{{"inputs": "x", "parameters": {{{LONE}: 1}}}}',
               '{"inputs": "x", "parameters": {"max_new_tokens": "5"}}']
ATTACKS = {"/classify": TEXT_ATTACKS, "/score": TEXT_ATTACKS, "/generate": GEN_ATTACKS,
           "/generate_stream": GEN_ATTACKS}
ROUNDS = 15


@pytest.fixture(scope="module")
def live(models_dir: Path) -> Iterator[tuple[str, Any]]:
    # A little batch-filling wait, so that the clients' requests share forward passes.
    app = create_app(Settings(models_dir=models_dir, max_wait_ms=5))
    with running_server(app) as url:
        yield url, app.state.registry


async def _well_behaved(http: httpx.AsyncClient, path: str) -> list[str]:
    """ROUNDS requests one after another on one connection; the problems seen."""
    problems = []
    for _ in range(ROUNDS):
        if path == "/generate_stream":
            async with http.stream("POST", path, json=GOOD[path]) as r:
                events = [json.loads(line[5:]) async for line in r.aiter_lines()
                          if line.startswith("data:")]
            last = events[-1] if events else {}
            if r.status_code != 200 or len(events) != 8 or last.get("generated_text") is None:
                problems.append(f"{r.status_code} {events[-1:]}")
        else:
            r = await http.post(path, json=GOOD[path])
            if r.status_code != 200:
                problems.append(f"{r.status_code} {r.text[:200]}")
    return problems


async def _attacker(http: httpx.AsyncClient, path: str) -> list[int]:
    statuses = []
    for i in range(ROUNDS):
        body = ATTACKS[path][i % len(ATTACKS[path])].encode()
        r = await http.post(path, content=body, headers={"content-type": "application/json"})
        json.loads(r.content.decode("utf-8"))
        statuses.append(r.status_code)
    return statuses


@pytest.mark.parametrize("path", list(GOOD))
def test_an_attacker_among_three_clients_fails_nobody_else(live: tuple[str, Any],
                                                           path: str) -> None:
    url, registry = live
    engine = (registry.entries["sentiment"].classify if path == "/classify"
              else registry.entries["shakespeare"].score)

    async def run() -> tuple[list[list[str]], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as attacker_http:
            clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in range(3)]
            try:
                *good, bad = await asyncio.gather(*(_well_behaved(c, path) for c in clients),
                                                  _attacker(attacker_http, path))
            finally:
                for c in clients:
                    await c.aclose()
        return good, bad  # type: ignore[return-value]

    with slowed(engine, 0.002):  # the batch is still running when the next requests come
        good, bad = asyncio.run(run())
    assert good == [[], [], []], good
    assert bad == [422] * ROUNDS  # on one keep-alive connection: never reset
    assert httpx.get(f"{url}/health/ready").status_code == 200


def test_a_batch_that_raises_fails_only_the_request_that_causes_it(live: tuple[str, Any]) -> None:
    """Defence in depth: an input that passes validation but breaks the forward pass (a stand-in
    for a tokenizer bug) fails its own request; the batch is run again member by member."""
    url, registry = live
    for path, engine in (("/classify", registry.entries["sentiment"].classify),
                         ("/score", registry.entries["shakespeare"].score)):
        real = engine.run_batch

        def poisoned(items: list[str], real: Any = real) -> Any:
            if any("POISON" in text for text in items):
                raise TypeError("the tokenizer cannot take this text")
            return real(items)

        async def run(path: str = path) -> tuple[list[httpx.Response], list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                blocker = asyncio.create_task(http.post(path, json={"inputs": "first"}))
                await asyncio.sleep(0.05)  # the worker is busy: the rest queue as one batch
                good = [http.post(path, json={"inputs": f"fine text {i}"}) for i in range(9)]
                bad = [http.post(path, json={"inputs": ["ok", "POISON"]}) for _ in range(3)]
                answers = await asyncio.gather(*good[:5], *bad, *good[5:])
                return [await blocker, *answers[:5], *answers[8:]], list(answers[5:8])

        before = engine.batches_split
        engine.run_batch = poisoned
        try:
            with slowed(engine, 0.2):
                good, bad = asyncio.run(run())
        finally:
            engine.run_batch = real
        assert [r.status_code for r in good] == [200] * 10, [r.text for r in good]
        assert [r.status_code for r in bad] == [422] * 3, [r.text for r in bad]
        assert "could not process the inputs of this request (TypeError)" in bad[0].text
        assert engine.batches_split > before
    assert httpx.get(f"{url}/health/ready").status_code == 200


def test_a_server_fault_in_every_batch_is_a_500_that_leaks_nothing(live: tuple[str, Any]) -> None:
    url, registry = live
    engine = registry.entries["sentiment"].classify
    real = engine.run_batch

    def broken(items: list[str]) -> Any:
        raise RuntimeError("secret /internal/path detail")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return list(await asyncio.gather(*(http.post("/classify", json={"inputs": f"x{i}"})
                                               for i in range(6))))
    engine.run_batch = broken
    try:
        responses = asyncio.run(run())
    finally:
        engine.run_batch = real
    assert [r.status_code for r in responses] == [500] * 6
    assert all(r.json() == INTERNAL for r in responses)
    assert len({r.headers["x-request-id"] for r in responses}) == 6
    assert httpx.post(f"{url}/classify", json={"inputs": "x"}).status_code == 200
