"""`python -m bench.reloads`: the server's memory across reloads. A real server on a copy of
the shipped models is reloaded (`POST /admin/reload`, every weights file touched so that both
models really load again) `--reloads` times, a /classify and a /generate after each; the
server's resident memory (and the proportional set of it with its generation workers) is read
every `--every` reloads. Prints a table per worker mode, writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.run import ROOT, Server, _pss_mb, _rss_mb

KEY = "bench-admin"


def _run(mode: str, reloads: int, every: int, app_dir: Path) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(ROOT / "models", models)
        server = Server({"RNN_MODELS_DIR": str(models), "RNN_ADMIN_KEYS": KEY,
                         "RNN_GENERATION_WORKER": mode}, cwd=app_dir)
        rows = [{"reloads": 0, "rss_mb": round(_rss_mb(server.proc.pid)),
                 "pss_mb": round(_pss_mb(server.proc.pid))}]
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                for i in range(1, reloads + 1):
                    for weights in models.glob("*/model.safetensors"):
                        st = weights.stat()
                        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
                    answer = http.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
                    assert answer.status_code == 200 and len(answer.json()["loaded"]) == 2, answer.text
                    assert http.post("/classify", json={"inputs": "fine"}).status_code == 200
                    assert http.post("/generate", json={
                        "inputs": "A", "parameters": {"max_new_tokens": 5}}).status_code == 200
                    time.sleep(0.3)  # the replaced versions retire once their work is done
                    if i % every == 0:
                        rows.append({"reloads": i, "rss_mb": round(_rss_mb(server.proc.pid)),
                                     "pss_mb": round(_pss_mb(server.proc.pid))})
        finally:
            server.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reloads", type=int, default=32)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--modes", default="process,thread", help="RNN_GENERATION_WORKER values")
    p.add_argument("--app-dir", type=Path, default=ROOT,
                   help="the checkout whose server to run (to compare two versions)")
    args = p.parse_args()
    runs = {mode: _run(mode, args.reloads, args.every, args.app_dir)
            for mode in args.modes.split(",")}
    for mode, rows in runs.items():
        print(f"\nRNN_GENERATION_WORKER={mode}\n")
        print("| reloads | server RSS (MB) | server and workers PSS (MB) |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['reloads']} | {r['rss_mb']} | {r['pss_mb']} |")
    out = ROOT / "bench" / "results" / f"reloads-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"app_dir": str(args.app_dir),
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "torch": torch.__version__},
                               "runs": runs}, indent=1) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
