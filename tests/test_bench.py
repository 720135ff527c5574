"""The benchmark's own accounting (its figures are measured by `make bench`, not asserted)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from bench.openloop import Outcome, _best, make_schedule, summarise
from bench.run import _best_of, _cpu, _latency_summary, _profiled, _table
from bench.static_server import StaticBatcher, StaticJob, TokenOut
from bench.static_server import create_app as static_app
from textrnn.artifact import Artifact, load_artifact


def test_the_profile_finds_the_busy_worker_thread_and_the_idle_event_loop() -> None:
    done = threading.Event()

    def spin() -> None:
        until = time.perf_counter() + 0.4
        while time.perf_counter() < until:
            pass
        done.wait()  # alive (and asleep) until the profile has been read

    worker = threading.Thread(target=spin)

    def load() -> dict[str, Any]:
        worker.start()
        time.sleep(0.5)  # the main thread, the "event loop" here, sleeps meanwhile
        return {"texts_per_s": 200.0}

    try:
        result = _profiled(os.getpid(), "texts_per_s", load)
    finally:
        done.set()
        worker.join()
    profile = result["profile"]
    assert 0.3 < profile["worker_on_cpu"] <= 1.05  # busy for 0.4 s of ~0.5
    assert profile["loop_on_cpu"] < 0.2
    # all of the process's CPU time, per 1,000 of the ~100 texts the load reported
    assert profile["server_cpu_ms_per_1000"] > 0.3 * 1000 / 200 * 1000


def test_the_profile_counts_a_worker_process_forked_by_the_server() -> None:
    spin = "import time\nuntil = time.perf_counter() + 0.4\nwhile time.perf_counter() < until: pass\n" \
           "time.sleep(30)"
    children: list[subprocess.Popen[bytes]] = []

    def load() -> dict[str, Any]:
        children.append(subprocess.Popen([sys.executable, "-c", spin]))
        time.sleep(0.6)
        return {"tokens_per_s": 100.0}

    try:
        result = _profiled(os.getpid(), "tokens_per_s", load)
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert 0.3 / 0.6 < result["profile"]["worker_on_cpu"] <= 1.05


def test_the_paired_ratio_divides_each_run_by_the_limit_measured_after_it() -> None:
    rates, limits = iter([500.0, 900.0, 600.0]), iter([1000.0, 1000.0, 600.0])
    level = _best_of(3, "texts_per_s", lambda: {"texts_per_s": next(rates)}, lambda: next(limits))
    assert level["texts_per_s"] == 900.0 and level["offline_texts_per_s"] == 1000.0  # best of each
    assert level["paired_ratio"] == 0.9  # the median of 0.5, 0.9 and 1.0


def test_the_cpu_ratio_compares_with_one_busy_thread_at_the_offline_rate() -> None:
    level = {"profile": {"server_cpu_ms_per_1000": 150.0}}
    assert _cpu(level, 10_000.0) == "150 | 1.50x"  # offline: 100 ms per 1,000 tokens
    assert _cpu({}, 10_000.0) == " | "


def test_the_latency_turns_compare_each_turn_with_its_own_baseline() -> None:
    # the machine slows down in turn 2; per-turn differences are unmoved by it
    summary = _latency_summary({"batched": [4.0, 9.0, 4.2], "unbatched": [4.5, 9.9, 4.4]})
    assert summary["median_p50_ms"] == {"batched": 4.2, "unbatched": 4.5}
    # batched minus unbatched: -0.5, -0.9, -0.2
    assert summary["median_difference_ms"]["unbatched"] == pytest.approx(-0.5)
    result = {"offline": {"classify_texts_per_s": 1000.0, "classify_batch": 64,
                          "generate_tokens_per_s": {}},
              "servers": [], "latency_c1": summary | {"seconds_per_turn": 2.0}}
    assert ("median p50 batched 4.20 ms, unbatched 4.50 ms; batched minus unbatched, "
            "median per turn: -0.50 ms") in _table(result)


async def _static_texts(batcher: StaticBatcher, requests: list[tuple[int, int]],
                        art: Artifact) -> list[str]:
    """Submit (seed, max_new_tokens) jobs at once; their texts once every one has ended."""
    loop = asyncio.get_running_loop()
    jobs = [StaticJob(art.tokenizer.encode("ROMEO:", add_special_tokens=False).ids, n, 0.8, 40,
                      0.95, 1.0, seed, loop) for seed, n in requests]
    for job in jobs:
        batcher.submit(job)
    for job in jobs:
        events: list[TokenOut] = []
        while not events or events[-1].finish_reason is None:
            got = await job.events.get()
            assert not isinstance(got, BaseException)
            events += got
        assert [e.index for e in events] == list(range(job.max_new_tokens))
        assert "".join(e.text for e in events) == job.text
    return [job.text for job in jobs]


def test_the_static_baseline_steps_a_batch_in_lock_step_and_the_seed_decides_the_text(
        models_dir: Path) -> None:
    art = load_artifact(models_dir / "shakespeare", "cpu", "float16")
    batcher = StaticBatcher(art, max_batch=8, window_s=0.2, flush_s=0.0)
    batcher.start()
    try:
        alone = [asyncio.run(_static_texts(batcher, [r], art))[0] for r in ((11, 5), (22, 30))]
        assert batcher.batch_sizes == [1, 1] and batcher.steps_run == 4 + 29
        together = asyncio.run(_static_texts(batcher, [(11, 5), (22, 30), (33, 12)], art))
    finally:
        batcher.stop()
    assert together[:2] == alone  # batched or alone, a request's seed decides its text
    assert len(together[1]) == 30 and len(together[2]) == 12
    # one batch of three, stepped until its longest was done: the short rows padded along
    assert batcher.batch_sizes == [1, 1, 3] and batcher.steps_run == 4 + 29 + 29


def test_the_static_baseline_answers_in_the_services_shapes_with_the_services_text(
        models_dir: Path) -> None:
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 20, "temperature": 0.8,
                                               "top_k": 40, "seed": 5}}
    with TestClient(create_app(Settings(models_dir=models_dir,
                                        generation_worker="thread"))) as service:
        expected = service.post("/generate", json=body).json()["generated_text"]
    with TestClient(static_app(models_dir / "shakespeare", window_ms=1)) as client:
        whole = client.post("/generate", json=body)
        stream = client.post("/generate_stream", json=body)
        stats = client.get("/stats").json()
    assert stats == {"batches": 2, "steps": 2 * 19, "rows_stepped": 2 * 19}  # one at a time
    assert whole.status_code == 200 and whole.json() == {"generated_text": expected,
                                                         "details": None}
    events = [json.loads(line[5:]) for line in stream.text.splitlines() if line.startswith("data:")]
    assert [e.get("index") for e in events] == list(range(20)), events[-3:]
    assert "".join(e["token"]["text"] for e in events) == expected
    assert events[-1]["generated_text"] == expected
    assert events[-1]["details"] == {"finish_reason": "length", "generated_tokens": 20, "seed": 5,
                                     "input_length": 6}


def test_the_open_loop_schedule_is_fixed_by_its_seed() -> None:
    first = make_schedule(8.0, 30.0, 16, 512, 0.5, seed=3)
    assert first == make_schedule(8.0, 30.0, 16, 512, 0.5, seed=3)
    assert first != make_schedule(8.0, 30.0, 16, 512, 0.5, seed=4)
    assert 8.0 * 30 * 0.7 < len(first) < 8.0 * 30 * 1.3  # Poisson: 240 expected, sd 15.5
    assert all(0 < a.at < 30 for a in first)
    assert [a.at for a in first] == sorted(a.at for a in first)
    assert all(16 <= a.max_new_tokens <= 512 for a in first)
    assert 0.3 < sum(a.stream for a in first) / len(first) < 0.7


def test_the_open_loop_summary_counts_from_the_scheduled_arrival() -> None:
    outcomes = [Outcome(True, 10, 10, 0.1, 1.0), Outcome(False, 20, 20, 2.0, 2.0),
                Outcome(True, 30, error="503"), Outcome(False, 40, error="unfinished")]
    summary = summarise(outcomes, elapsed=4.0)
    assert summary["completed"] == 2 and summary["requests_per_s"] == 0.5
    assert summary["tokens_per_s"] == 30 / 4.0
    assert summary["p99_ms"] == 2000.0 and summary["stream_ttft_p50_ms"] == 100.0
    assert summary["per_token_p50_ms"] == 100.0  # 2.0 s for 20 tokens; 1.0 s for 10
    assert summary["tpot_p50_ms"] == pytest.approx(100.0)  # 0.9 s for the 9 after the first
    assert summary["errors"] == {"503": 1, "unfinished": 1}


def test_the_open_loop_keeps_each_servers_best_repeat() -> None:
    slow = {"completed": 10, "p99_ms": 900.0}
    fast = {"completed": 10, "p99_ms": 400.0}
    failed = {"completed": 4, "p99_ms": 100.0}
    best = _best([slow, failed, fast])
    assert best["p99_ms"] == 400.0 and best["runs"] == [slow, failed, fast]
    assert _best([{"completed": 0, "p99_ms": float("nan")}, slow])["p99_ms"] == 900.0
