"""`python -m bench.run`: the server under load against the offline limit and an unbatched
baseline, in one run. Prints one table and writes JSON to bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.load import classify_load, generate_load
from bench.offline import classify_limit, generate_limit

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
FALLBACK = ["a gripping , beautiful film", "dull and lifeless", "it 's not bad at all",
            "one long string of cliches ."]


def _texts(path: Path) -> list[str]:
    if path.exists():
        return [line.split("\t", 1)[1] for line in path.read_text().splitlines()[1:]]
    return FALLBACK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pss_mb(pid: int) -> float:
    """Proportional set size of the server and its descendants (the fork server and the
    generation workers): pages they share, torch's among them, counted once between them."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
    return total


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait until the server `proc` answers `url`/health/ready with 200."""
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited during start-up")
        time.sleep(0.02)


class Server:
    """The real server in a subprocess, with its start-up time and memory."""

    def __init__(self, env: dict[str, str], cwd: Path = ROOT, *, args: Sequence[str] = (),
                 log: Path | None = None) -> None:
        """`args`: more uvicorn arguments (`--http app.connections:Protocol`); `log`: a file
        for the server's output (discarded by default)."""
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        with open(log or os.devnull, "wb") as out:  # the server holds its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--no-access-log", *args],
                cwd=cwd, env=os.environ | {"RNN_MODELS_DIR": str(ROOT / "models")} | env,
                stdout=out, stderr=out)
        wait_until_ready(self.url, self.proc, "server")
        self.startup_s = time.perf_counter() - started
        self.idle_rss_mb = _rss_mb(self.proc.pid)
        self.peak_rss_mb = self.idle_rss_mb
        self.idle_pss_mb = _pss_mb(self.proc.pid)
        self.peak_pss_mb = self.idle_pss_mb
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._sampling and self.proc.poll() is None:
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(self.proc.pid))
            self.peak_pss_mb = max(self.peak_pss_mb, _pss_mb(self.proc.pid))
            time.sleep(0.2)

    def stop(self) -> None:
        self._sampling = False
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _children(pid: int) -> list[int]:
    """Every process below `pid`: the fork server and the generation workers it started."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (int(p) for p in (task / "children").read_text().split()):
                pids += [child, *_children(child)]
    return pids


def _threads(pid: int) -> dict[int, tuple[int, int, int]]:
    """Each thread of `pid` and of its child processes: ns on a CPU, ns runnable but waiting
    for one, voluntary sleeps (waiting for the GIL, a lock or work)."""
    out = {}
    tasks: list[Path] = []
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):  # a worker that exited meanwhile
            tasks += Path(f"/proc/{p}/task").iterdir()
    for task in tasks:
        try:
            run_ns, wait_ns, _ = (int(x) for x in (task / "schedstat").read_text().split())
            status = (task / "status").read_text().splitlines()
            sleeps = next(int(line.split()[1]) for line in status
                          if line.startswith("voluntary_ctxt_switches"))
        except (OSError, ValueError, StopIteration):  # the thread ended meanwhile
            continue
        out[int(task.name)] = (run_ns, wait_ns, sleeps)
    return out


def _profiled(pid: int, key: str, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `load`, and add where the server's time went meanwhile: the share of the wall time
    its busiest worker thread (the inference thread, or the generation scheduler in a thread
    or in the worker process) was on a CPU, was runnable but had none, and how often it
    slept; the event loop's (the main thread's) share on a CPU; and the CPU time of the
    server and its worker processes per 1,000 texts or tokens."""
    before, started = _threads(pid), time.perf_counter()
    result = load()
    after, wall = _threads(pid), time.perf_counter() - started
    zero = (0, 0, 0)
    used = {tid: tuple(a - b for a, b in zip(now, before.get(tid, zero), strict=True))
            for tid, now in after.items()}
    worker = max((d for tid, d in used.items() if tid != pid), key=lambda d: d[0], default=zero)
    units = float(result[key]) * wall
    result["profile"] = {
        "worker_on_cpu": worker[0] / 1e9 / wall, "worker_runnable": worker[1] / 1e9 / wall,
        "worker_sleeps_per_s": worker[2] / wall, "loop_on_cpu": used.get(pid, zero)[0] / 1e9 / wall,
        "server_cpu_ms_per_1000": sum(d[0] for d in used.values()) / 1e6 / max(units, 1) * 1000}
    return result


def _best_of(repeats: int, key: str, load: Callable[[], dict[str, Any]],
             limit: Callable[[], float]) -> dict[str, Any]:
    """Run a load level `repeats` times, each followed by its offline limit; the best load
    run's figures, with the best limit as `offline_<key>` and every run's rate beside them.
    `paired_ratio` is the median over the repeats of each run's rate over the limit measured
    right after it: seconds apart, so the machine's drift mostly cancels, where the best of
    each may come from different moments."""
    runs, limits = [], []
    for _ in range(repeats):
        runs.append(load())
        limits.append(limit())
    best = max(runs, key=lambda x: float(x[key]))
    paired = statistics.median(float(r[key]) / lim for r, lim in zip(runs, limits, strict=True))
    return best | {f"offline_{key}": max(limits), "offline_runs": limits,
                   "server_runs": [x[key] for x in runs], "paired_ratio": paired}


def _run_server(name: str, env: dict[str, str], args: argparse.Namespace,
                texts: list[str]) -> dict[str, Any]:
    server = Server(env, cwd=args.app_dir)
    out: dict[str, Any] = {"mode": name, "env": env, "startup_s": server.startup_s,
                           "idle_rss_mb": server.idle_rss_mb, "idle_pss_mb": server.idle_pss_mb,
                           "classify": {}, "generate": {}}
    sentiment, lm = ROOT / "models" / "sentiment", ROOT / "models" / "shakespeare"
    def rounds(c: int) -> int:
        """Generations per stream client: at least --rounds, and enough that the level runs
        --min-generations in all (one stream's 2 x 128 tokens alone would last 0.3 s)."""
        return int(max(1, args.rounds, -(-args.min_generations // c)))
    # This shared machine's speed drifts by up to 2x within minutes, and interference only
    # ever slows a measurement down. So each level runs `repeats` times, each time followed
    # by its offline limit (the server idle), and the best of each is compared: two figures
    # measured side by side, each at the machine's best moment.
    try:
        for c in args.classify_concurrency:
            def classify(c: int = c) -> dict[str, Any]:
                return _profiled(server.proc.pid, "texts_per_s", lambda: asyncio.run(
                    classify_load(server.url, texts, c, args.seconds, args.max_requests)))
            r = _best_of(args.repeats, "texts_per_s", classify,
                         lambda: classify_limit(sentiment, texts, 64, seconds=2.0,
                                                device=args.device, weights=args.weights))
            out["classify"][c] = r
            print(f"  {name} classify c={c}: {r['texts_per_s']:.0f} texts/s "
                  f"(offline {r['offline_texts_per_s']:.0f})", file=sys.stderr)
        for c in args.generate_concurrency:
            def generate(c: int = c) -> dict[str, Any]:
                return _profiled(server.proc.pid, "tokens_per_s", lambda: asyncio.run(
                    generate_load(server.url, c, args.tokens, rounds(c), stream=not args.whole)))
            def limit(c: int = c) -> float:
                return generate_limit(lm, c, args.tokens, device=args.device, rounds=rounds(c),
                                      weights=args.weights)
            r = _best_of(args.repeats, "tokens_per_s", generate, limit)
            out["generate"][c] = r
            print(f"  {name} generate c={c}: {r['tokens_per_s']:.0f} tokens/s "
                  f"(offline {r['offline_tokens_per_s']:.0f})", file=sys.stderr)
    finally:
        out["peak_rss_mb"] = server.peak_rss_mb
        out["peak_pss_mb"] = server.peak_pss_mb
        server.stop()
    return out


def _alternating_latency(envs: dict[str, dict[str, str]], texts: list[str], turns: int,
                         seconds: float, app_dir: Path = ROOT) -> dict[str, Any]:
    """Classify latency at concurrency 1 of several servers, all started and measured in
    turns (A, B, A, B, ...), so that the machine's drift falls on each alike."""
    servers = {name: Server(env, cwd=app_dir) for name, env in envs.items()}
    p50s: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(turns):
            for name, server in servers.items():
                level = asyncio.run(classify_load(server.url, texts, 1, seconds, 10**9))
                p50s[name].append(level["p50_ms"])
    finally:
        for server in servers.values():
            server.stop()
    return _latency_summary(p50s) | {"seconds_per_turn": seconds}


def _latency_summary(p50s: dict[str, list[float]]) -> dict[str, Any]:
    """Each server's p50 per turn and their median, and the median over the turns of the
    first server's p50 minus each other's in the same turn."""
    first = next(iter(p50s.values()))
    return {"turns": len(first), "p50_ms": p50s,
            "median_p50_ms": {name: statistics.median(v) for name, v in p50s.items()},
            "median_difference_ms": {name: statistics.median(a - b for a, b in zip(first, v,
                                                                                   strict=True))
                                     for name, v in list(p50s.items())[1:]}}


def _busy(level: dict[str, Any]) -> str:
    profile = level.get("profile")
    return f"{profile['worker_on_cpu']:.0%} / {profile['loop_on_cpu']:.0%}" if profile else ""


def _cpu(level: dict[str, Any], offline: float) -> str:
    """The server's CPU time (every thread of it and its workers) per 1,000 texts or tokens,
    and its ratio to the offline loop's (one thread, busy throughout: 1 / its rate)."""
    profile = level.get("profile")
    if not profile:
        return " | "
    used = profile["server_cpu_ms_per_1000"]
    return f"{used:.0f} | {used / (1e6 / offline):.2f}x"


def _paired(level: dict[str, Any]) -> str:
    return f"{level['paired_ratio']:.0%}" if "paired_ratio" in level else ""


def _table(result: dict[str, Any]) -> str:
    lim = result["offline"]
    rows = ["| run | concurrency | req/s | texts or tokens/s | offline, beside it | vs offline | "
            "paired | p50 ms | p90 ms | p99 ms | TTFT p50 ms | worker / loop on CPU | "
            "CPU ms per 1,000 | CPU vs offline | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["servers"]:
        for c, r in run["classify"].items():
            base = r["offline_texts_per_s"]
            rows.append(f"| {run['mode']} classify | {c} | {r['requests_per_s']:.0f} | "
                        f"{r['texts_per_s']:.0f} | {base:.0f} | {r['texts_per_s'] / base:.0%} | "
                        f"{_paired(r)} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | | "
                        f"{_busy(r)} | {_cpu(r, base)} | {r['errors'] or ''} |")
        for c, r in run["generate"].items():
            base = r["offline_tokens_per_s"]
            mode = f"{run['mode']} generate" + (" (whole)" if result.get("settings", {}).get("whole") else "")
            rows.append(f"| {mode} | {c} | {r['requests_per_s']:.1f} | "
                        f"{r['tokens_per_s']:.0f} | {base:.0f} | {r['tokens_per_s'] / base:.0%} | "
                        f"{_paired(r)} | {r['p50_ms']:.0f} | "
                        f"{r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['ttft_p50_ms']:.1f} | "
                        f"{_busy(r)} | {_cpu(r, base)} | {r['errors'] or ''} |")
    rows.append("")
    rows.append(f"offline limit at the end of the run: classify {lim['classify_texts_per_s']:.0f} "
                f"texts/s at batch {lim['classify_batch']}; generate " + ", ".join(
                    f"{v:.0f} tokens/s at {k} streams" for k, v in lim["generate_tokens_per_s"].items()))
    latency = result.get("latency_c1")
    if latency:
        (name, diff), = latency["median_difference_ms"].items()
        medians = ", ".join(f"{k} {v:.2f} ms" for k, v in latency["median_p50_ms"].items())
        first = next(iter(latency["median_p50_ms"]))
        rows.append(f"classify at concurrency 1, both servers up and measured in turns "
                    f"({latency['turns']} turns of {latency['seconds_per_turn']:g} s each): "
                    f"median p50 {medians}; {first} minus {name}, median per turn: {diff:+.2f} ms")
    for run in result["servers"]:
        rows.append(f"{run['mode']}: start-up to ready {run['startup_s']:.2f} s, resident memory "
                    f"{run['idle_rss_mb']:.0f} MB idle, {run['peak_rss_mb']:.0f} MB peak under load"
                    + (f"; proportional (PSS) with its worker processes {run['idle_pss_mb']:.0f} MB "
                       f"idle, {run['peak_pss_mb']:.0f} MB peak" if "idle_pss_mb" in run else ""))
    return "\n".join(rows)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--classify-concurrency", type=int, nargs="*", default=[1, 4, 16, 64, 256])
    p.add_argument("--generate-concurrency", type=int, nargs="*", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=4.0, help="per classify level and repeat")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each level, each followed by its offline limit; best of each")
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="generations per stream client")
    p.add_argument("--whole", action="store_true",
                   help="generate whole answers (POST /generate) instead of streams")
    p.add_argument("--min-generations", type=int, default=16,
                   help="generations per level at least (more rounds at low concurrency)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unbatched server")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N]: the servers' RNN_DEVICE and the offline limit's device")
    p.add_argument("--weights", choices=("float16", "float32"), default="float16",
                   help="the servers' RNN_WEIGHTS, and how the offline limit holds the weights")
    p.add_argument("--generation-worker", choices=("auto", "thread", "process"), default="auto",
                   help="the servers' RNN_GENERATION_WORKER")
    p.add_argument("--texts", type=Path, default=SST2_DEV, help="label<TAB>text file (SST-2 dev)")
    p.add_argument("--app-dir", type=Path, default=ROOT,
                   help="serve from this checkout (compare versions with one load generator); "
                        "the models are this checkout's")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    texts = _texts(args.texts)
    threads = {"RNN_THREADS": "1", "RNN_DEVICE": args.device, "RNN_WEIGHTS": args.weights,
               "RNN_GENERATION_WORKER": args.generation_worker}
    runs = [("batched", threads)]
    if not args.no_baseline:
        runs.append(("unbatched", threads | {"RNN_MAX_BATCH_SIZE": "1",
                                             "RNN_MAX_ACTIVE_SEQUENCES": "1"}))
    servers = [_run_server(name, env, args, texts) for name, env in runs]
    latency = None
    if len(runs) > 1 and 1 in args.classify_concurrency:
        print("  concurrency 1 latency, servers in turns...", file=sys.stderr)
        latency = _alternating_latency(dict(runs), texts, 2 * args.repeats, 2.0, args.app_dir)
    print("  offline limits...", file=sys.stderr)
    sentiment, lm, device = ROOT / "models" / "sentiment", ROOT / "models" / "shakespeare", args.device
    best = max((classify_limit(sentiment, texts, b, device=device, weights=args.weights), b)
               for b in (16, 64, 128))
    offline = {"classify_texts_per_s": best[0], "classify_batch": best[1],
               "classify_texts_per_s_batch64": classify_limit(sentiment, texts, 64, device=device,
                                                              weights=args.weights),
               # best of three: one lock-step run is short, and this machine is noisy
               "generate_tokens_per_s": {str(c): max(generate_limit(lm, c, args.tokens,
                                                                    device=device,
                                                                    weights=args.weights)
                                                     for _ in range(3))
                                         for c in args.generate_concurrency}}
    def commit_of(folder: Path) -> str:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder,
                              capture_output=True, text=True).stdout.strip()
    commit = commit_of(args.app_dir)  # the server's; the load generator's is bench_commit
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
              "bench_commit": commit_of(ROOT),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cores": os.cpu_count(), "torch": torch.__version__,
                          "device": args.device if args.device == "cpu"
                          else torch.cuda.get_device_name(torch.device(args.device)),
                          "python": platform.python_version()},
              "settings": vars(args) | {"out": str(args.out), "texts": str(args.texts),
                                         "app_dir": str(args.app_dir)}, "offline": offline,
              "servers": servers, "latency_c1": latency}
    table = _table(result)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2))
    (args.out / "latest.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
