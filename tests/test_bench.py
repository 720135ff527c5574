"""The benchmark's own accounting (its figures are measured by `make bench`, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from bench.run import _best_of, _latency_summary, _profiled, _table


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
