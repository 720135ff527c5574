"""The classify/score batch engine with a fake batch function: each request gets its own
rows, a large request is read in pieces taken in turn with newer requests, a request whose
client left stops, a piece that fails alone fails its request only; and over HTTP, the
per-request character budget at its value and one past, and a maximal /score next to a
light client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.batching import BatchEngine
from app.errors import InvalidInput, Overloaded
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import running_server, slowed


class _Recorder:
    """A batch function that records its batches and answers each item with its own row."""

    def __init__(self, pause_s: float = 0.0, bad: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.pause_s, self.bad = pause_s, bad

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        time.sleep(self.pause_s)
        if self.bad is not None and self.bad in items:
            raise ValueError("cannot read this one")
        return [f"row:{item}" for item in items]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def _engine(run: _Recorder, executor: ThreadPoolExecutor, max_cost: float = float("inf"),
            max_batch_size: int = 64) -> BatchEngine[str, str]:
    return BatchEngine("m", run, executor, max_batch_size, 100, cost=len, max_batch_cost=max_cost)


def test_each_request_gets_its_own_rows_from_a_shared_batch(
        executor: ThreadPoolExecutor) -> None:
    run = _Recorder(pause_s=0.05)

    async def go() -> list[list[str]]:
        engine = _engine(run, executor)
        engine.start()
        first = engine.submit(["a"])  # runs alone; the next three gather meanwhile
        await asyncio.sleep(0.01)
        rest = [engine.submit([f"{r}{i}" for i in range(r + 1)]) for r in range(3)]
        out = await asyncio.gather(first, *rest)
        await engine.stop()
        return out

    out = asyncio.run(go())
    assert out == [["row:a"], ["row:00"], ["row:10", "row:11"], ["row:20", "row:21", "row:22"]]
    assert run.batches == [["a"], ["00", "10", "11", "20", "21", "22"]]


def test_a_large_request_is_read_in_pieces_and_a_newer_one_goes_next(
        executor: ThreadPoolExecutor) -> None:
    """Ten texts of 5 characters with 12 per batch: pieces of two; a short request sent while
    the first piece runs is in the next batch, not after the last piece."""
    run = _Recorder(pause_s=0.05)

    async def go() -> tuple[list[str], list[str]]:
        engine = _engine(run, executor, max_cost=12)
        engine.start()
        big = engine.submit([f"big{i:02d}" for i in range(10)])
        await asyncio.sleep(0.02)  # the first piece is running
        small = engine.submit(["hi"])
        out = await asyncio.gather(big, small)
        await engine.stop()
        return out[0], out[1]

    big, small = asyncio.run(go())
    assert big == [f"row:big{i:02d}" for i in range(10)] and small == ["row:hi"]
    assert run.batches[0] == ["big00", "big01"]
    assert run.batches[1] == ["hi", "big02", "big03"]  # the newcomer first, then the rest
    assert all(sum(map(len, b)) <= 12 for b in run.batches)
    assert [t for b in run.batches for t in b if t.startswith("big")] == [
        f"big{i:02d}" for i in range(10)]


def test_a_stream_of_new_requests_does_not_starve_a_long_one(
        executor: ThreadPoolExecutor) -> None:
    """New requests arrive faster than batches run, each nearly a batch by itself: the long
    request still gets every other batch and ends while they keep coming."""
    run = _Recorder(pause_s=0.03)

    async def go() -> tuple[bool, int]:
        engine = _engine(run, executor, max_cost=12)
        engine.start()
        big = engine.submit([f"big{i:02d}" for i in range(10)])  # 5 pieces of two
        shorts = []
        for _ in range(60):  # 1.2 s of a new 10-character request every 20 ms
            shorts.append(engine.submit(["s" * 10]))
            await asyncio.sleep(0.02)
            if big.done():
                break
        ended_first = big.done()
        await asyncio.gather(big, *shorts)
        await engine.stop()
        return ended_first, len(shorts)

    ended_first, sent = asyncio.run(go())
    assert ended_first and sent < 60


def test_a_text_over_the_batch_cost_is_a_batch_of_its_own(executor: ThreadPoolExecutor) -> None:
    run = _Recorder()

    async def go() -> list[str]:
        engine = _engine(run, executor, max_cost=4)
        engine.start()
        out = await engine.submit(["long text", "ab", "cd"])
        await engine.stop()
        return out

    assert asyncio.run(go()) == ["row:long text", "row:ab", "row:cd"]
    assert run.batches == [["long text"], ["ab", "cd"]]


def test_a_request_whose_client_left_runs_no_more_pieces(executor: ThreadPoolExecutor) -> None:
    run = _Recorder(pause_s=0.05)

    async def go() -> None:
        engine = _engine(run, executor, max_batch_size=2)
        engine.start()
        big = engine.submit([str(i) for i in range(20)])
        await asyncio.sleep(0.07)  # into the second piece
        big.cancel()
        await asyncio.sleep(0.2)
        assert engine.depth == 0
        await engine.stop()

    asyncio.run(go())
    assert len(run.batches) <= 3  # of ten


def test_a_piece_that_fails_alone_fails_its_request_only(executor: ThreadPoolExecutor) -> None:
    run = _Recorder(pause_s=0.05, bad="poison")

    async def go() -> list[object]:
        engine = _engine(run, executor)
        engine.start()
        first = engine.submit(["warm"])
        await asyncio.sleep(0.01)
        good = engine.submit(["fine", "also fine"])
        bad = engine.submit(["poison"])
        out = await asyncio.gather(first, good, bad, return_exceptions=True)
        await engine.stop()
        return out

    first, good, bad = asyncio.run(go())
    assert first == ["row:warm"] and good == ["row:fine", "row:also fine"]
    assert isinstance(bad, InvalidInput)


def test_stopping_answers_the_requests_of_the_batch_running(executor: ThreadPoolExecutor) -> None:
    """A model retired while a batch runs: its requests get 503 (Overloaded), not silence."""
    run = _Recorder(pause_s=0.3)

    async def go() -> BaseException | None:
        engine = _engine(run, executor)
        engine.start()
        request = engine.submit(["a"])
        await asyncio.sleep(0.05)  # its batch is running
        await engine.stop()
        try:
            await asyncio.wait_for(request, 2)
        except Overloaded as e:
            return e
        return None

    assert isinstance(asyncio.run(go()), Overloaded)


def test_senders_take_turns_whatever_each_has_waiting(executor: ThreadPoolExecutor) -> None:
    """One request per batch: key a queues four while the first runs, then key b one; b's
    goes second, not after all of a's."""
    run = _Recorder(pause_s=0.03)

    async def go() -> None:
        engine = _engine(run, executor, max_batch_size=1)
        engine.start()
        first = engine.submit(["first"], "a")
        await asyncio.sleep(0.01)
        rest = [engine.submit([f"a{i}"], "a") for i in range(4)] + [engine.submit(["b0"], "b")]
        await asyncio.gather(first, *rest)
        await engine.stop()

    asyncio.run(go())
    assert run.batches == [["first"], ["a0"], ["b0"], ["a1"], ["a2"], ["a3"]]


def test_no_key_holds_more_than_half_of_the_queue(executor: ThreadPoolExecutor) -> None:
    """A queue of 100: a key's 50th waiting request is taken, its 51st refused naming the
    share, while another key's still is; without keys one sender may fill it all."""
    release = threading.Event()

    async def go() -> None:
        engine = _engine(_Recorder(), executor)
        engine.start()
        blocker = executor.submit(release.wait, 10)  # the model is busy: requests wait
        held = [engine.submit([f"a{i}"], "a") for i in range(50)]
        with pytest.raises(Overloaded, match=r"this API key has 50 requests waiting on model "
                                             r"'m', half of its queue \(RNN_MAX_QUEUE\)"):
            engine.submit(["a50"], "a")
        other = engine.submit(["b0"], "b")
        anonymous = [engine.submit([f"x{i}"]) for i in range(49)]  # 100 waiting in all
        with pytest.raises(Overloaded, match="has 100 requests waiting"):
            engine.submit(["x49"])
        release.set()
        blocker.result()
        assert len(await asyncio.gather(*held, other, *anonymous)) == 100
        await engine.stop()

    try:
        asyncio.run(go())
    finally:
        release.set()


def test_a_key_flooding_classify_leaves_the_others_their_share(models_dir: Path) -> None:
    """Key a keeps 40 /classify requests in flight at 0.1 s a batch of one: its half of the
    queue (16 of 32) is always full. Key b's requests meanwhile wait behind one or two of
    a's batches (the one running, and one more when a's turn comes first), not behind a
    whole queue of them (1.6 s), and none is refused."""
    app = create_app(Settings(models_dir=models_dir, api_keys=["key-a", "key-b"], max_queue=32,
                              max_batch_size=1))
    with running_server(app) as url:
        engine = app.state.registry.get("sentiment", "classify").classify
        with slowed(engine, 0.1):
            stop = threading.Event()
            statuses: list[int] = []

            async def flood() -> None:
                async with httpx.AsyncClient(base_url=url, timeout=30, headers={
                        "Authorization": "Bearer key-a"}) as http:
                    async def one() -> None:
                        while not stop.is_set():
                            r = await http.post("/classify", json={"inputs": "x"})
                            statuses.append(r.status_code)
                            if r.status_code == 503:
                                await asyncio.sleep(0.02)
                    await asyncio.gather(*(one() for _ in range(40)))

            attacker = threading.Thread(target=asyncio.run, args=(flood(),))
            attacker.start()
            time.sleep(0.5)
            latencies, light = [], []
            with httpx.Client(base_url=url, headers={"Authorization": "Bearer key-b"},
                              timeout=30) as http:
                for _ in range(10):
                    started = time.perf_counter()
                    light.append(http.post("/classify", json={"inputs": "fine"}).status_code)
                    latencies.append(time.perf_counter() - started)
            stop.set()
            attacker.join()
    assert light == [200] * 10
    assert 503 in statuses  # a's requests past its half of the queue were refused
    assert sorted(latencies)[8] < 0.8, latencies


@pytest.mark.parametrize("route", ["/classify", "/score"])
def test_the_character_budget_at_its_value_and_one_past(models_dir: Path, route: str) -> None:
    app = create_app(Settings(models_dir=models_dir, max_request_chars=100, max_input_chars=60))
    with TestClient(app) as client:
        assert client.post(route, json={"inputs": ["a" * 50, "b" * 50]}).status_code == 200
        refused = client.post(route, json={"inputs": ["a" * 50, "b" * 51]})
    assert refused.status_code == 422
    assert "101 characters" in refused.text and "RNN_MAX_REQUEST_CHARS" in refused.text


@contextmanager
def _slowed_per_char(engine: Any, seconds: float) -> Iterator[None]:
    """Make a batch take `seconds` longer per character, as a bigger model's would."""
    real = engine.run_batch

    def slow(items: list[str]) -> Any:
        time.sleep(seconds * sum(map(len, items)))
        return real(items)
    engine.run_batch = slow
    try:
        yield
    finally:
        engine.run_batch = real


def test_a_maximal_score_shares_the_model_with_a_light_client(models_dir: Path) -> None:
    """64 texts of 1,001 characters at 2,000 characters per batch, 50 us per character: a
    text a batch, 64 batches of 0.05 s (3.2 s in all). Short /score requests sent meanwhile
    answer in under 0.6 s, not after all of them; and when the large request's client
    leaves, its remaining pieces are not run."""
    app = create_app(Settings(models_dir=models_dir, max_batch_chars=2000))
    with running_server(app) as url:
        engine = app.state.registry.get("shakespeare", "score").score
        with _slowed_per_char(engine, 50e-6):
            def big() -> None:
                with suppress(httpx.TimeoutException):  # the client leaves
                    httpx.post(f"{url}/score", json={"inputs": ["to be or not " * 77] * 64},
                               timeout=1.5)

            attacker = threading.Thread(target=big)
            attacker.start()
            time.sleep(0.3)
            latencies = []
            for _ in range(3):
                started = time.perf_counter()
                answer = httpx.post(f"{url}/score", json={"inputs": "ROMEO:"}, timeout=10)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200
            attacker.join()
            time.sleep(0.2)
            ran = engine.batches_run
            time.sleep(0.5)
            assert engine.batches_run == ran  # its client left: no more of its pieces
    assert max(latencies) < 0.6, latencies  # one batch of the other's, then its own
