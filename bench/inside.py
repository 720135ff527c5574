"""`python -m bench.inside`: how long the pieces of the largest requests to look inside the
shipped models run on the inference thread (each piece is what the model's batches may wait
behind), and the whole request's time. One torch thread, as the service runs a CPU model.
Prints a table, writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import torch
from pydantic import BaseModel

from app.inside import explain, memory, units
from app.inside_schemas import ExplainRequest, MemoryRequest, Span, UnitsRequest
from bench.run import ROOT
from textrnn.artifact import Artifact, load_artifact
from textrnn.pieces import Pieces, step

SPEECH = ("PROSPERO:\nThou liest, malignant thing! Hast thou forgot\nThe foul witch Sycorax, "
          "who with age and envy\nWas grown into a hoop? hast thou forgot her?\n\n"
          "ARIEL:\nNo, sir.\n\n")
WORDS = "a gripping, warm and very funny film that i would gladly see again "


def _measure(name: str, artifact: Artifact, work: Any, body: BaseModel) -> dict[str, Any]:
    pieces: Pieces[BaseModel] = work(artifact, body)
    times: list[float] = []
    started = time.perf_counter()
    finished = False
    while not finished:
        t = time.perf_counter()
        with torch.inference_mode():
            finished, answer = step(pieces)
        times.append(time.perf_counter() - t)
    assert answer is not None
    total = time.perf_counter() - started
    return {"request": name, "pieces": len(times), "total_s": round(total, 3),
            "longest_ms": round(max(times) * 1000, 1),
            "median_ms": round(statistics.median(times) * 1000, 1),
            "answer_bytes": len(answer.model_dump_json())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each request; the best kept")
    args = p.parse_args()
    torch.set_num_threads(1)
    lm, clf = load_artifact(ROOT / "models" / "shakespeare"), load_artifact(ROOT / "models" / "sentiment")
    text = (SPEECH * 40)[:4000]
    words = " ".join((WORDS * 30).split()[:256])
    cases = [
        ("/inside/units, 4,000 characters, top layer", lm, units,
         UnitsRequest(inputs=text, spans=[Span(start=0, end=9)])),
        ("/inside/memory, 4,000 characters x 50 units", lm, memory,
         MemoryRequest(inputs=text, units=list(range(50)))),
        ("/explain, integrated gradients, 256 words x 32 steps", clf, explain,
         ExplainRequest(inputs=words, steps=32)),
        ("/explain, occlusion, 256 words", clf, explain,
         ExplainRequest(inputs=words, method="occlusion")),
    ]
    rows = [min((_measure(*case) for _ in range(args.repeats)), key=lambda r: r["total_s"])
            for case in cases]
    print("| request | pieces | longest piece (ms) | median piece (ms) | whole (s) | answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['request']} | {r['pieces']} | {r['longest_ms']:.0f} | {r['median_ms']:.0f} | "
              f"{r['total_s']:.2f} | {r['answer_bytes'] / 1e3:.0f} kB |")
    out = ROOT / "bench" / "results" / f"inside-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "torch": torch.__version__},
                               "rows": rows}, indent=1) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
