"""The `docker` marker and the Docker engine fixture; the figures the image test measured,
shown at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.deploy.engine import Docker, Unavailable, find_docker, start_engine, stop_engine

FIGURES = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: builds and runs the container image (skipped "
                            "where no Docker engine can start; `make image-test` runs them)")
    config.stash[FIGURES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("container image")
        for line in figures:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> list[str]:
    """Lines of measured figures (build time, image size, ...) shown after the run."""
    return pytestconfig.stash[FIGURES]


def unavailable(reason: str) -> None:
    """Skip, or fail under `make image-test` (RNN_IMAGE_TEST=required), where the image test
    must run."""
    if os.environ.get("RNN_IMAGE_TEST") == "required":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    """A Docker engine that answers: the running one, or dockerd started for the session."""
    try:
        engine = start_engine(find_docker(), tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    except Unavailable as e:
        unavailable(str(e))
    try:
        yield engine
    finally:
        stop_engine(engine)
