"""`python -m bench.stall`: how long a running stream stalls while long prompts arrive.

One stream generates on the shipped language model, each token written as it comes
(RNN_STREAM_FLUSH_MS=0, so the gaps are the engine's, not the flush interval's). Once it
runs, `--prompts` requests with `--prompt-chars`-character prompts arrive together. The
largest gap between two of the stream's tokens while they are read is compared with the
largest gap of the same stream before they arrived. Prints a table, writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import torch

from bench.run import ROOT, Server

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east. "


async def _trial(url: str, prompts: int, chars: int, seed: int) -> dict[str, float]:
    text = (PROMPT * (chars // len(PROMPT) + 1))[:chars]
    times: list[float] = []
    burst: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        async def long_prompts() -> None:
            burst.append(time.perf_counter())
            await asyncio.gather(*(http.post("/generate", json={
                "inputs": text, "parameters": {"max_new_tokens": 1, "seed": i}})
                for i in range(prompts)))
            burst.append(time.perf_counter())

        sender: asyncio.Task[None] | None = None
        async with http.stream("POST", "/generate_stream", json={
                "inputs": "ROMEO:", "parameters": {"max_new_tokens": 1024, "seed": seed,
                                                   "temperature": 0.8}}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    times.append(time.perf_counter())
                    if len(times) == 200:
                        sender = asyncio.create_task(long_prompts())
                    if sender is not None and sender.done():
                        break
        assert sender is not None
        await sender
    gaps = [b - a for a, b in itertools.pairwise(times)]
    start, end = burst
    during = [b - a for a, b in itertools.pairwise(times) if b >= start and a <= end]
    return {"alone_max_ms": max(gaps[20:190]) * 1000, "alone_p50_ms": statistics.median(gaps[20:190]) * 1000,
            "during_max_ms": max(during) * 1000, "prompts_s": end - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-chars", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra setting for the server (repeatable), e.g. RNN_PREFILL_CHUNK=64")
    p.add_argument("--app-dir", type=Path, default=ROOT,
                   help="the checkout whose server to run (to compare two versions)")
    p.add_argument("--label", default="")
    args = p.parse_args()
    env = {"RNN_STREAM_FLUSH_MS": "0"} | dict(e.split("=", 1) for e in args.env)
    server = Server(env, cwd=args.app_dir)
    try:
        trials = [asyncio.run(_trial(server.url, args.prompts, args.prompt_chars, seed))
                  for seed in range(args.repeats)]
    finally:
        server.stop()
    print(f"| run | stream gap alone p50 / max (ms) | largest gap while {args.prompts} "
          f"x {args.prompt_chars}-char prompts arrive (ms) | prompts answered in (s) |")
    print("|---|---|---|---|")
    for i, t in enumerate(trials):
        print(f"| {args.label or 'this'} {i + 1} | {t['alone_p50_ms']:.1f} / {t['alone_max_ms']:.0f} | "
              f"{t['during_max_ms']:.0f} | {t['prompts_s']:.2f} |")
    out = ROOT / "bench" / "results" / f"stall-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"label": args.label, "env": env, "app_dir": str(args.app_dir),
                               "prompts": args.prompts, "prompt_chars": args.prompt_chars,
                               "machine": {"cpus": torch.get_num_threads(), "platform":
                                           platform.platform(), "torch": torch.__version__},
                               "trials": trials}, indent=1) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
