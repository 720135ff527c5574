"""The image built and run for real: `docker build`, then the compose service `api` up, healthy,
answering as `make serve` does, as uid 10001 on a read-only root, and stopping gracefully.

The container shares the host's network (dockerd runs without a bridge), so its server listens
on a loopback port chosen here; everything else is docker-compose.yml's service as written.
Skipped where no Docker engine can start; `make image-test` runs it and fails instead.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.app.conftest import wait_ready
from tests.deploy.conftest import unavailable
from tests.deploy.engine import Docker, Unavailable, base_image, build_arguments, run

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
# Per run, so that two test runs on one engine do not share a container or a tag.
TAG = f"textrnn:image-test-{os.getpid()}"
PROJECT = f"textrnn-image-test-{os.getpid()}"
TORCH_VERSION = re.search(r"^VERSION=(\S+)$", (ROOT / "scripts" / "install-torch.sh").read_text(),
                          re.M)[1]  # type: ignore[index]
CLASSIFY = {"inputs": ["a gripping, beautiful film", "dull and lifeless", "not bad at all"],
            "parameters": {"top_k": 2}}
GENERATE = [
    {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 120, "do_sample": False,
                                        "seed": 1, "details": True}},
    {"inputs": "JULIET:", "parameters": {"max_new_tokens": 120, "temperature": 0.8, "top_k": 40,
                                         "seed": 7, "details": True}},
]
STREAM = {"inputs": "KING HENRY:", "stream": True,
          "parameters": {"max_new_tokens": 1000, "temperature": 0.9, "seed": 11}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _logs(docker: Docker, container: str) -> str:
    result = docker("logs", container, check=False)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def image(docker: Docker, figures: list[str]) -> Iterator[str]:
    """The image built from the working tree (the default target: models not baked in)."""
    start = time.monotonic()
    try:
        base = base_image(docker)
    except Unavailable as e:
        unavailable(str(e))
    figures.append(f"base image {base}: {time.monotonic() - start:.0f} s to have it")
    with build_arguments(f"torch-{TORCH_VERSION}+cpu-*.whl") as args:
        start = time.monotonic()
        docker("build", "--build-arg", f"BASE_IMAGE={base}", *args, "--tag", TAG, str(ROOT),
               timeout=900)
        seconds = time.monotonic() - start
    size = int(docker("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    figures.append(f"build: {seconds:.0f} s on {base}, build arguments: "
                   f"{' '.join(a for a in args if a.startswith(('PIP_', 'TORCH_')))}")
    figures.append(f"image {TAG}: {size / 1e6:.0f} MB")
    yield TAG
    docker("image", "rm", TAG, check=False)


@dataclass
class Service:
    """The compose service up: its URL, container and the command that runs compose."""

    url: str
    container: str
    compose: list[str]


def _compose_file(docker: Docker, image: str, port: int, out: Path) -> Path:
    """docker-compose.yml's `api` service on the host's network: no published ports, the
    image's own command listening on 127.0.0.1:PORT instead of 0.0.0.0:8000, and the health
    check asking that port."""
    api = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]
    command = json.loads(docker("image", "inspect", "--format", "{{json .Config.Cmd}}",
                                image).stdout)
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    check = api["healthcheck"]["test"]
    assert any("127.0.0.1:8000" in part for part in check), check
    api["healthcheck"]["test"] = [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                                  for part in check]
    del api["ports"], api["build"]
    api |= {"image": image, "network_mode": "host", "command": command}
    out.write_text(yaml.safe_dump({"services": {"api": api}}))
    return out


@pytest.fixture(scope="module")
def service(docker: Docker, image: str, figures: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`docker compose up api`, waited on until the container's health check passes."""
    port = _free_port()
    file = _compose_file(docker, image, port, tmp_path_factory.mktemp("compose") / "compose.yml")
    compose = [*docker.compose, "--project-directory", str(ROOT), "--project-name", PROJECT,
               "--file", str(file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNN_")}  # the defaults
    run([*compose, "down", "--timeout", "5"], 120, check=False)
    start = time.monotonic()
    subprocess.run([*compose, "up", "--detach", "--no-build", "api"], check=True, env=env,
                   capture_output=True, timeout=300)
    container = run([*compose, "ps", "--quiet", "api"], 60).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    ready = None
    try:
        while True:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", container).stdout)
            if ready is None:
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        ready = time.monotonic() - start
                except httpx.TransportError:
                    pass
            if state["Health"]["Status"] == "healthy":
                break
            assert state["Running"] and time.monotonic() - start < 180, \
                (state, _logs(docker, container)[-3000:])
            time.sleep(0.25)
        healthy = time.monotonic() - start
        figures.append(f"compose up to /health/ready 200: {ready:.1f} s; to the health check "
                       f"passing (every 10 s): {healthy:.1f} s")
        yield Service(url, container, compose)
    finally:
        sys.stderr.write(_logs(docker, container)[-4000:])  # shown when a test failed
        run([*compose, "down", "--timeout", "5"], 120, check=False)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make serve` from the working tree (app.serve), the same models and settings as the
    compose service, on another loopback port."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]
    settings = {k: re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(v))  # ${RNN_X:-default}: the default
                for k, v in compose["environment"].items() if k.startswith("RNN_")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNN_")} | settings
    env["RNN_MODELS_DIR"] = str(ROOT / "models")
    url = f"http://127.0.0.1:{_free_port()}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--host", "127.0.0.1",
                                 "--port", url.rsplit(":", 1)[1]], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc, why=lambda: log.read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_image_holds_the_service_without_models_or_training(docker: Docker,
                                                                image: str) -> None:
    probe = ("import importlib.util as u, os; print(u.find_spec('app.main') is not None, "
             "u.find_spec('training') is None, os.listdir('/srv/models'), os.getuid())")
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                 probe).stdout.split()
    assert out == ["True", "True", "[]", "10001"]


def test_the_container_answers_as_make_serve_does(service: Service, direct: str) -> None:
    for model in ("sentiment", None):
        body = CLASSIFY | ({"model": model} if model else {})
        theirs = httpx.post(f"{service.url}/classify", json=body, timeout=60)
        ours = httpx.post(f"{direct}/classify", json=body, timeout=60)
        assert theirs.status_code == ours.status_code == 200, theirs.text
        assert theirs.json() == ours.json()
    for body in GENERATE:
        theirs = httpx.post(f"{service.url}/generate", json=body, timeout=120)
        ours = httpx.post(f"{direct}/generate", json=body, timeout=120)
        assert theirs.status_code == ours.status_code == 200, theirs.text
        assert theirs.json() == ours.json()
        assert len(theirs.json()["details"]["tokens"]) == 120


def _exec(docker: Docker, container: str, code: str) -> str:
    return docker("exec", container, "python", "-c", code).stdout.strip()


def test_the_server_runs_as_10001_on_a_read_only_root(docker: Docker, service: Service) -> None:
    # tini is PID 1 and the server its child; every process in the container is uid 10001.
    procs = json.loads(_exec(docker, service.container, (
        "import json, os; print(json.dumps({p: [open(f'/proc/{p}/cmdline').read().split('\\0')[0],"
        " os.stat(f'/proc/{p}').st_uid] for p in os.listdir('/proc') if p.isdigit()}))")))
    assert procs["1"][0].endswith("tini")
    assert any(cmd.endswith("uvicorn") or cmd.endswith("python") for cmd, _ in procs.values())
    assert {uid for _, uid in procs.values()} == {10001}, procs
    # The root filesystem and the models are read-only; /tmp (a tmpfs) is writable.
    writes = _exec(docker, service.container, (
        "import os\n"
        "def w(p):\n"
        "    try:\n"
        "        open(p, 'w').close(); os.remove(p); return 'ok'\n"
        "    except OSError as e:\n"
        "        return os.strerror(e.errno)\n"
        "print(w('/opt/venv/x'), w('/home/textrnn/x'), w('/srv/models/x'), w('/tmp/x'), sep='|')"))
    assert writes.split("|") == ["Read-only file system"] * 3 + ["ok"]
    host = json.loads(docker("inspect", "--format", "{{json .HostConfig}}",
                             service.container).stdout)
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]


def test_sighup_through_tini_reloads_the_models(docker: Docker, service: Service) -> None:
    # tini is PID 1 and passes the signal on: `docker compose kill -s HUP` still reloads.
    run([*service.compose, "kill", "-s", "HUP", "api"], 60)
    deadline = time.monotonic() + 60
    while "SIGHUP: reload done: loaded [], kept [" not in (
            logs := _logs(docker, service.container)):
        assert time.monotonic() < deadline, logs[-2000:]
        time.sleep(0.2)
    assert httpx.get(f"{service.url}/health/ready", timeout=5).status_code == 200


def test_a_stream_in_flight_finishes_through_compose_stop(docker: Docker, service: Service,
                                                          direct: str, figures: list[str]) -> None:
    """Last: it stops the service. The container is held to a tenth of a CPU first (`docker
    update`), else the 1,000 tokens are out before `compose stop` has sent SIGTERM."""
    docker("update", "--cpus", "0.1", service.container)
    arrivals: list[float] = []
    events: list[dict[str, Any]] = []
    first = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{service.url}/generate", json=STREAM, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    arrivals.append(time.monotonic())
                    first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(60)
    stop = subprocess.Popen([*service.compose, "stop", "api"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    draining = None  # when SIGTERM has reached the server: it answers 503, or no longer
    while draining is None and reader.is_alive():
        try:
            if httpx.get(f"{service.url}/health/ready", timeout=2).status_code == 503:
                draining = time.monotonic()
        except httpx.TransportError:
            draining = time.monotonic()
        time.sleep(0.02)
    reader.join(120)
    out, _ = stop.communicate(timeout=120)
    assert stop.returncode == 0, out
    assert draining is not None, "the stream ended before the server was told to stop"
    after = sum(t > draining for t in arrivals)
    assert after > 0, "no token came after the server was told to stop"
    final = events[-1]
    assert len(events) == 1000 and final["details"]["finish_reason"] == "length"
    state = json.loads(docker("inspect", "--format", "{{json .State}}",
                              service.container).stdout)
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    # The text is the one the server from the working tree writes.
    body = STREAM | {"stream": False}
    assert final["generated_text"] == httpx.post(f"{direct}/generate", json=body,
                                                 timeout=120).json()["generated_text"]
    figures.append(f"compose stop: {after} of 1000 tokens came after SIGTERM; exit code 0")
