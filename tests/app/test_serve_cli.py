"""`textrnn-serve` (`python -m app.serve`): serves one folder with --model, names the pid that
SIGHUP reloads, and stops at once, with a reason and a non-zero status, on a missing models
directory or a port already taken (before any model loads)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.serve import port_taken
from tests.app.conftest import ROOT, wait_ready


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "app.serve", *args], cwd=ROOT,
                            env=os.environ | {"RNN_GENERATION_WORKER": "thread"} | (env or {}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_missing_models_directory_stops_at_once(tmp_path: Path) -> None:
    proc = _serve("--port", str(_free_port()), env={"RNN_MODELS_DIR": str(tmp_path / "nothing")})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"models directory {tmp_path / 'nothing'} does not exist" in out


def test_a_taken_port_stops_before_any_model_loads(models_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_taken("127.0.0.1", port) is not None
        started = time.monotonic()
        proc = _serve("--port", str(port), env={"RNN_MODELS_DIR": str(models_dir)})
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out and "--port" in out
    assert "loaded model" not in out and time.monotonic() - started < 30
    assert port_taken("127.0.0.1", _free_port()) is None


def test_model_serves_that_folder_and_the_log_names_the_pid(models_dir: Path) -> None:
    port = _free_port()
    proc = _serve("--model", str(models_dir / "sentiment"), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        models = httpx.get(f"{url}/models").json()
        assert [m["name"] for m in models["models"]] == ["sentiment"]
        assert models["defaults"] == {"classification": "sentiment", "generation": None}
        assert httpx.post(f"{url}/classify", json={"inputs": "superb"}).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f"pid {proc.pid} (`kill -HUP {proc.pid}` reloads them)" in out
    assert f"on http://127.0.0.1:{port}" in out
