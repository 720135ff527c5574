"""A Docker engine for the image test: the client and compose found, `dockerd` started when none
runs, a base image pulled or bootstrapped from Debian's packages, and the build arguments that
let pip inside the build reach the registries this machine's pip reaches.

Anything missing raises `Unavailable`, which the fixtures turn into a skip with its reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = ["Docker", "Unavailable", "base_image", "build_arguments", "find_docker", "run",
           "start_engine"]

ROOT = Path(__file__).resolve().parents[2]
PYTHON_SLIM = "python:3.11-slim"
BOOTSTRAPPED = "textrnn-base:bookworm"


class Unavailable(Exception):
    """No Docker engine, compose or base image here: the test cannot run (a skip)."""


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command's result, its output captured; a failure raises with the output in the message."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=None if env is None else {**os.environ, **env})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@dataclass
class Docker:
    """A client that builds with BuildKit, the compose command, and the engine they talk to."""

    cli: str
    compose: list[str]
    env: dict[str, str] = field(default_factory=dict)  # DOCKER_BUILDKIT=1 for an old client
    daemon: subprocess.Popen[bytes] | None = None  # the dockerd started here, if any

    def __call__(self, *args: str, timeout: float = 120, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`."""
        return run([self.cli, *args], timeout, self.env, check)

    def answers(self) -> bool:
        """Whether the engine answers."""
        try:
            return self("version", "--format", "{{.Server.Version}}", timeout=20,
                        check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, name: str) -> bool:
        """Whether the engine holds an image of that name."""
        return self("image", "inspect", name, check=False).returncode == 0


def _buildkit_env(cli: str) -> dict[str, str] | None:
    """The environment under which `cli build` uses BuildKit (the Dockerfile's secret mount
    needs it): none with the buildx plugin; DOCKER_BUILDKIT=1 with a client older than 23,
    which has BuildKit built in. None when this client cannot use BuildKit."""
    if run([cli, "buildx", "version"], 20, check=False).returncode == 0:
        return {}
    version = run([cli, "version", "--format", "{{.Client.Version}}"], 20, check=False).stdout
    major = re.match(r"\d+", version.strip())
    return {"DOCKER_BUILDKIT": "1"} if major and int(major[0]) < 23 else None


def find_docker() -> Docker:
    """The docker client (one that builds with BuildKit) and compose (the plugin or the
    standalone docker-compose)."""
    clients = [c for c in dict.fromkeys([shutil.which("docker"), "/usr/bin/docker"])
               if c and Path(c).is_file()]
    if not clients:
        raise Unavailable("no docker client (Debian: apt-get install docker.io)")
    for cli in clients:
        env = _buildkit_env(cli)
        if env is not None:
            break
    else:
        raise Unavailable(f"no docker client here builds with BuildKit ({', '.join(clients)}: "
                          "no buildx plugin and version 23 or newer)")
    if run([cli, "compose", "version"], 20, check=False).returncode == 0:
        compose = [cli, "compose"]
    elif shutil.which("docker-compose"):
        compose = [str(shutil.which("docker-compose"))]
    else:
        raise Unavailable("no docker compose (Debian: apt-get install docker-compose)")
    return Docker(cli, compose, env)


def start_engine(docker: Docker, log: Path) -> Docker:
    """The engine answering: the one running, or `dockerd` started now without a bridge or
    iptables rules (containers then use the host's network, and the test its loopback)."""
    if docker.answers():
        return docker
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise Unavailable("no Docker engine runs and there is no dockerd to start")
    if os.geteuid() != 0:
        raise Unavailable("no Docker engine runs, and starting dockerd needs root")
    with log.open("wb") as out:
        daemon = subprocess.Popen([dockerd, "--bridge=none", "--iptables=false"], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    docker.daemon = daemon
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.poll() is None:
        if docker.answers():
            return docker
        time.sleep(0.5)
    stop_engine(docker)
    tail = log.read_text(errors="replace")[-600:]
    raise Unavailable(f"dockerd did not start (see {log}): {tail}")


def stop_engine(docker: Docker) -> None:
    """Stop the dockerd started here, if any."""
    if docker.daemon is not None and docker.daemon.poll() is None:
        docker.daemon.terminate()
        try:
            docker.daemon.wait(30)
        except subprocess.TimeoutExpired:
            docker.daemon.kill()
            docker.daemon.wait()
    docker.daemon = None


def base_image(docker: Docker) -> str:
    """The image to build on: RNN_IMAGE_BASE when set, else python:3.11-slim from a registry,
    else a stand-in bootstrapped from Debian's packages (scripts/bootstrap-base-image.sh)."""
    chosen = os.environ.get("RNN_IMAGE_BASE")
    if chosen:
        return chosen
    for name in (PYTHON_SLIM, BOOTSTRAPPED):
        if docker.has_image(name):
            return name
    try:
        if docker("pull", "--quiet", PYTHON_SLIM, timeout=180, check=False).returncode == 0:
            return PYTHON_SLIM
    except subprocess.TimeoutExpired:
        pass
    if shutil.which("mmdebstrap") is None:
        raise Unavailable(f"no registry gives {PYTHON_SLIM} and mmdebstrap is not installed to "
                          "bootstrap a base image (Debian: apt-get install mmdebstrap)")
    path = f"{Path(docker.cli).parent}:{os.environ.get('PATH', '')}"  # this docker client
    try:
        run([str(ROOT / "scripts" / "bootstrap-base-image.sh"), BOOTSTRAPPED], 600,
            {**docker.env, "PATH": path})
    except (AssertionError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"no registry gives {PYTHON_SLIM}, and bootstrapping a base image "
                          f"from Debian's packages failed: {str(e)[-600:]}") from e
    return BOOTSTRAPPED


@functools.cache
def _pip_config() -> dict[str, str]:
    """This machine's pip settings (`pip config list`), the environment's over the files'."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], 60, check=False).stdout
    rank = {":env:": 0, "install": 1, "global": 2}
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        m = re.fullmatch(r"(:env:|install|global)\.([\w-]+)='(.*)'", line.strip())
        if m and (m[2] not in found or rank[m[1]] < found[m[2]][0]):
            found[m[2]] = (rank[m[1]], m[3])
    return {key: value for key, (_, value) in found.items()}


def _local_dir(location: str) -> Path | None:
    """The folder a find-links or index location names on this disk, if it does."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(location) if parsed.scheme == "" else None


@contextmanager
def _serve(folders: dict[str, Path]) -> Iterator[int]:
    """Folders served read-only over HTTP on the loopback, each under /NAME/: the port."""
    links = Path(os.environ.get("TMPDIR", "/tmp")) / f"textrnn-image-wheels-{os.getpid()}"
    links.mkdir(exist_ok=True)
    for name, folder in folders.items():
        (links / name).unlink(missing_ok=True)
        (links / name).symlink_to(folder)

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(links), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(links)


@contextmanager
def build_arguments(torch_wheel: str) -> Iterator[list[str]]:
    """`docker build` arguments that give pip inside the build what this machine's pip has:
    its index, extra indexes and find-links (folders on this disk served on the loopback for
    the build's duration, which runs on the host's network), trusted hosts, proxies, and its CA
    bundle as the build secret `ca_bundle`. torch comes from the find-links when they hold
    `torch_wheel` (a glob), not from PyTorch's index."""
    config = _pip_config()
    folders: dict[str, Path] = {}
    local_torch = False

    def located(location: str, index: bool) -> str:
        nonlocal local_torch
        folder = _local_dir(location)
        if folder is None:
            return location
        if index:  # a PEP 503 index links its files relative to the folder above `simple`
            served, rest = (folder.parent, "/simple/") if folder.name == "simple" else (folder, "/")
        else:
            served, rest = folder, "/"
            local_torch |= any(folder.glob(torch_wheel))
        name = f"d{len(folders)}"
        folders[name] = served
        return f"http://127.0.0.1:{{port}}/{name}{rest}"

    pip_args: dict[str, str] = {}
    if "index-url" in config:
        pip_args["PIP_INDEX_URL"] = located(config["index-url"], index=True)
    for key, index in (("extra-index-url", True), ("find-links", False)):
        if key in config:
            pip_args["PIP_" + key.upper().replace("-", "_")] = " ".join(
                located(loc, index) for loc in config[key].split())
    if "trusted-host" in config:
        pip_args["PIP_TRUSTED_HOST"] = config["trusted-host"]
    cert = config.get("cert") or os.environ.get("SSL_CERT_FILE")
    with _serve(folders) as port:
        args = ["--network", "host"]
        for key, value in pip_args.items():
            args += ["--build-arg", f"{key}={value.replace('{port}', str(port))}"]
        if local_torch:
            args += ["--build-arg", "TORCH_INDEX_URL="]
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                    "no_proxy"):
            if key in os.environ:
                args += ["--build-arg", f"{key}={os.environ[key]}"]
        if cert and Path(cert).is_file():
            args += ["--secret", f"id=ca_bundle,src={cert}"]
        yield args
