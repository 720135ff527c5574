"""The server and its generation worker under a process manager's signals: SIGTERM or SIGINT
to the whole process group (systemd's default, `kill -- -PGID`, Ctrl-C in a terminal) lets a
stream in flight finish and leaves no process behind; SIGKILL of the server leaves no orphan."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import wait_ready

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "shakespeare"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped language model alone: big enough that 1,000 tokens take a while."""
    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip("the shipped shakespeare model is absent")
    root = tmp_path_factory.mktemp("signals")
    (root / "shakespeare").symlink_to(SHIPPED)
    return root


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def server(models: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    env = os.environ | {"RNN_MODELS_DIR": str(models), "RNN_GENERATION_WORKER": "process"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as under systemd
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        assert len(_group(proc.pid)) >= 2, "no worker process in the server's group"
        yield url, proc
    finally:
        for pid in _group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        log.close()
        sys.stderr.write((tmp_path / "server.log").read_text())  # shown when a test fails


def _no_process_left(pgid: int, within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := _group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_lets_the_stream_in_flight_finish(
        server: tuple[str, subprocess.Popen[str]], signum: int) -> None:
    url, proc = server
    body = {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 1000, "seed": 3,
                                               "temperature": 0.8}}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data:"))
        events = [json.loads(next(lines)[5:]) for _ in range(10)]
        os.killpg(proc.pid, signum)
        events += [json.loads(line[5:]) for line in lines]
    assert [e.get("index") for e in events] == list(range(1000)), events[-1]
    assert events[-1]["details"]["finish_reason"] == "length"
    assert proc.wait(timeout=60) == 0
    assert _no_process_left(proc.pid, 10) == []


@pytest.mark.slow
def test_sigkill_of_the_server_leaves_no_orphan_worker(
        server: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = server
    assert httpx.post(f"{url}/generate", json={"inputs": "ROMEO:"}, timeout=60).status_code == 200
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _no_process_left(proc.pid, 15) == []
