"""`textrnn-serve` (`python -m app.serve`): uvicorn serving the models, with N server processes
on one port (`--workers N`) whose `/metrics` adds up every process's metrics."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from app.logs import configure_logging
from app.settings import load_settings

__all__ = ["Supervisor", "answers", "link_models", "main", "port_taken", "prepare_metrics_dir"]

log = logging.getLogger("uvicorn.error")
# uvicorn's HTTP protocol with the head, time and connection limits (app/connections.py).
PROTOCOL = "app.connections:Protocol"


def answers(process: Process, timeout: float, interrupt: socket.socket | None = None
            ) -> bool | None:
    """Whether a server process answers uvicorn's health check within `timeout` seconds:
    True, or False when it does not or exits meanwhile (at once, not when the timeout runs
    out). None when `interrupt` becomes readable first (a signal for the supervisor)."""
    if not process.process.is_alive():
        return False
    conn, sentinel = process.parent_conn, process.process.sentinel
    try:
        while conn.poll(0):  # a late answer to an earlier check
            conn.recv()
        conn.send(b"ping")
        waits: list[Any] = [conn, sentinel] + ([interrupt] if interrupt is not None else [])
        ready = wait(waits, timeout)
        if conn in ready:
            conn.recv()
            return True
        if interrupt is not None and interrupt in ready and sentinel not in ready:
            return None
    except (OSError, EOFError, pickle.UnpicklingError):
        pass
    return False


class Supervisor(Multiprocess):
    """uvicorn's `--workers` supervisor, with a health check that sees a process die while
    it is being asked, and that gives way to a signal. uvicorn's waits out the whole
    `timeout_worker_healthcheck` on a dead process (the `--worker-start-timeout`, long enough
    for a replacement to load the models), deaf to signals meanwhile: a SIGTERM then took a
    minute to act on."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        # Python writes a byte here on every signal (its handlers run in the main loop).
        self._signalled, wake = socket.socketpair()
        self._signalled.setblocking(False)
        wake.setblocking(False)
        self._wake = wake
        signal.set_wakeup_fd(wake.fileno())

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        with contextlib.suppress(BlockingIOError):
            while self._signalled.recv(512):
                pass
        for idx, process in enumerate(self.processes):
            alive = answers(process, self.config.timeout_worker_healthcheck, self._signalled)
            if alive is None:
                return  # the run loop handles the signal first
            if alive:
                continue
            process.kill()  # hung, or already gone
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # The app cannot start (a bad setting, the port): every replacement would fail.
                log.error("Child process [%s] failed to start, stopping the parent process.",
                          process.pid)
                self.should_exit.set()
                return
            log.info("Child process [%s] died", process.pid)
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[idx] = replacement


def prepare_metrics_dir(path: Path) -> None:
    """Make `path` an empty folder for the processes' metric files: values a previous run
    left there would be added to this run's."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound (in use, or not an address here), or None when it can.
    Checked before any model loads: uvicorn binds only after the app has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def link_models(folders: list[Path]) -> Path:
    """A temporary models directory holding links to `folders` (served under their names)."""
    names = [f.resolve().name for f in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"--model folders must have distinct names: {', '.join(names)}")
    root = Path(tempfile.mkdtemp(prefix="textrnn-models-"))
    for folder in folders:
        if not folder.is_dir():
            shutil.rmtree(root)
            raise ValueError(f"--model {folder}: no such folder")
        (root / folder.resolve().name).symlink_to(folder.resolve())
    return root


def main(argv: list[str] | None = None) -> None:
    """Serve `app.main:app` with uvicorn; with several workers, in prometheus-client's
    multiprocess mode (PROMETHEUS_MULTIPROC_DIR, a temporary folder unless set)."""
    parser = argparse.ArgumentParser(prog="textrnn-serve", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on; 0.0.0.0 for every one (set RNN_API_KEYS)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--models-dir", type=Path,
                        help="serve every model folder in this directory (RNN_MODELS_DIR)")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="serve this model folder (repeat for more) instead of a directory")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes; each loads its own copy of the models")
    parser.add_argument("--timeout-graceful-shutdown", type=float, default=30.0,
                        help="seconds in-flight requests may take to finish after SIGTERM")
    parser.add_argument("--worker-start-timeout", type=int, default=60,
                        help="seconds a worker may take to load the models when SIGHUP "
                             "replaces it (uvicorn's default, 5 s, is too short for large models)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.model and args.models_dir:
        parser.error("give --model or --models-dir, not both")
    linked = None
    if args.model:
        try:
            linked = link_models(args.model)
        except ValueError as e:
            parser.error(str(e))
        os.environ["RNN_MODELS_DIR"] = str(linked)
    elif args.models_dir:
        os.environ["RNN_MODELS_DIR"] = str(args.models_dir)
    settings = load_settings()  # a bad RNN_* setting is reported once here, not once per worker
    configure_logging(settings.log_format)
    if not settings.models_dir.is_dir():
        parser.exit(2, f"{parser.prog}: error: models directory {settings.models_dir} does not "
                       "exist; point RNN_MODELS_DIR or --models-dir at the folder of models\n")
    taken = port_taken(args.host, args.port)
    if taken is not None:
        parser.exit(1, f"{parser.prog}: error: cannot listen on {args.host}:{args.port} "
                       f"({taken}); choose another --port or stop what holds it\n")
    log.info("serving the models of %s on http://%s:%d; pid %d (`kill -HUP %d` reloads them)",
             settings.models_dir if linked is None else ", ".join(map(str, args.model)),
             args.host, args.port, os.getpid(), os.getpid())
    made = None
    if args.workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            made = tempfile.mkdtemp(prefix="textrnn-metrics-")
            # Read by prometheus-client when each worker imports it: set before they start.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        prepare_metrics_dir(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    try:
        if args.workers == 1:
            uvicorn.run("app.main:app", host=args.host, port=args.port, http=PROTOCOL,
                        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
                        log_level=args.log_level)
        else:
            config = uvicorn.Config("app.main:app", host=args.host, port=args.port,
                                    http=PROTOCOL, workers=args.workers,
                                    timeout_graceful_shutdown=args.timeout_graceful_shutdown,
                                    timeout_worker_healthcheck=args.worker_start_timeout,
                                    log_level=args.log_level)
            Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        for folder in (made, linked):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
