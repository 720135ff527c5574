"""Several server processes on one port (`python -m app.serve --workers 2`): both serve, and
/metrics counts every process's requests whichever process answers it."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from app.serve import answers, prepare_metrics_dir
from app.serve import main as serve_main
from tests.app.conftest import descendants, wait_ready

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text answer, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests_of(folder: Path, pid: int) -> Samples:
    """The request counters one server process wrote (its own file, read alone)."""
    alone = folder.parent / f"alone-{pid}"
    alone.mkdir(exist_ok=True)
    shutil.copy(folder / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(alone))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if s.name == "rnn_requests_total"}


def served(counts: Samples, route: str) -> float:
    return counts.get(("rnn_requests_total", (("route", route), ("status", "200"))), 0.0)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@contextmanager
def launched(models_dir: Path, metrics_dir: Path, log: Path
             ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m app.serve --workers 2` on a free loopback port, once it answers ready;
    its output goes to `log`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"RNN_MODELS_DIR": str(models_dir),
                        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--workers", "2", "--host",
                                 "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 90, log.read_text)
        yield url, proc
    finally:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def test_two_workers_serve_and_metrics_add_up(models_dir: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # a previous run's: cleared at start

    def classify(url: str) -> int:
        r = httpx.post(f"{url}/classify", json={"inputs": "a gripping, beautiful film"})
        assert r.status_code == 200 and r.json()[0][0]["label"] == "positive", r.text
        return 0

    def generate(url: str) -> int:
        r = httpx.post(f"{url}/generate", json={"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": 6, "seed": 3, "details": True}})
        assert r.status_code == 200, r.text
        return int(r.json()["details"]["generated_tokens"])

    log = tmp_path / "serve.log"
    with launched(models_dir, metrics_dir, log) as (url, proc):
        assert not (metrics_dir / "counter_1.db").exists()
        n_classify = tokens = 0
        workers: set[int] = set()
        deadline = time.monotonic() + 120
        # New connections, many at once, until each process has served both routes: the
        # kernel hands each connection to whichever process accepts it first.
        with ThreadPoolExecutor(8) as pool:
            while len(workers) < 2:
                assert time.monotonic() < deadline, f"one process served everything: {workers}"
                tokens += sum(pool.map(generate, [url] * 8))
                list(pool.map(classify, [url] * 8))
                n_classify += 8
                pids = [int(p.stem.split("_")[1]) for p in metrics_dir.glob("counter_*.db")]
                workers = {pid for pid in pids
                           if served(requests_of(metrics_dir, pid), "/classify") > 0
                           and served(requests_of(metrics_dir, pid), "/generate") > 0}
        assert workers <= descendants(proc.pid)
        children = descendants(proc.pid)

        # /metrics from either process: the same totals, with no per-process labels. Asked
        # 8 at a time, so that both processes answer some.
        answered: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(40):
                for text in pool.map(lambda _: httpx.get(f"{url}/metrics").text, range(8)):
                    got = samples(text)
                    assert got[("rnn_requests_total", (("route", "/classify"),
                                                       ("status", "200")))] == n_classify
                    assert got[("rnn_generated_tokens_total", (("model", "shakespeare"),))] \
                        == tokens
                    assert got[("rnn_model_ready", (("model", "sentiment"),))] == 1
                    assert got[("rnn_queue_depth", (("model", "sentiment"),))] == 0
                    assert got[("rnn_active_sequences", (("model", "shakespeare"),))] == 0
                answered = {pid for pid in workers
                            if served(requests_of(metrics_dir, pid), "/metrics")}
                if answered == workers:
                    break
        assert answered == workers, "one process answered every /metrics"

        # A worker that dies: its live gauges go, its counts stay in the totals.
        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while alive(dead) or (metrics_dir / f"gauge_livesum_{dead}.db").exists():
            assert time.monotonic() < deadline, "the dead worker's gauges stayed"
            time.sleep(0.2)
            got = samples(httpx.get(f"{url}/metrics").text)
        assert got[("rnn_requests_total", (("route", "/classify"), ("status", "200")))] \
            == n_classify

        children |= descendants(proc.pid)  # the dead worker's replacement, if started
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, log.read_text()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, [p for p in children if alive(p)]
        time.sleep(0.1)


def _pinged_then_dies(conn: Connection) -> None:
    conn.recv()
    time.sleep(0.5)


def _pinged_then_answers(conn: Connection) -> None:
    conn.recv()
    conn.send(True)
    time.sleep(5)


@pytest.mark.parametrize(("target", "expected"), [(_pinged_then_dies, False),
                                                  (_pinged_then_answers, True)])
def test_health_check_ends_when_the_process_does(target: Callable[[Connection], None],
                                                 expected: bool) -> None:
    """A server process that dies while the supervisor asks after it is reported at once:
    the supervisor answers no signal while it waits, and its timeout is a minute."""
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    process = context.Process(target=target, args=(child_conn,))
    process.start()
    try:
        started = time.monotonic()
        worker = cast(Any, SimpleNamespace(process=process, parent_conn=parent_conn))
        assert answers(worker, timeout=120) is expected
        assert time.monotonic() - started < 60
    finally:
        process.kill()
        process.join()


def _pinged_then_silent(conn: Connection) -> None:
    conn.recv()
    time.sleep(30)


def test_health_check_gives_way_to_a_signal() -> None:
    """A signal for the supervisor (its wake-up socket readable) ends the wait on a silent
    process without judging it."""
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    process = context.Process(target=_pinged_then_silent, args=(child_conn,))
    process.start()
    signalled, wake = socket.socketpair()
    try:
        worker = cast(Any, SimpleNamespace(process=process, parent_conn=parent_conn))
        threading.Timer(0.5, wake.send, (b"\x0f",)).start()
        started = time.monotonic()
        assert answers(worker, timeout=120, interrupt=signalled) is None
        assert time.monotonic() - started < 60
        assert answers(worker, timeout=0.2) is False  # silent, and still alive
    finally:
        process.kill()
        process.join()
        signalled.close()
        wake.close()


def test_prepare_metrics_dir_clears_a_previous_runs_values(tmp_path: Path) -> None:
    (tmp_path / "gauge_livesum_7.db").write_bytes(b"x")
    (tmp_path / "counter_8.db").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("kept")
    prepare_metrics_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_serve_refuses_zero_workers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_main(["--workers", "0"])
    assert "--workers must be at least 1, not 0" in capsys.readouterr().err
