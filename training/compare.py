"""`python -m training.compare`: RNN vs LSTM vs GRU on both tasks with the same budget.

Trains every cell (and, for classification, uni- and bidirectional) with the same steps,
seed and sizes, then measures each model's quality and inference speed and writes a table and
a plot of the validation curves (docs/compare.md, docs/compare.png, and the section of
docs/training.md between the `compare` markers).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from textrnn.artifact import load_artifact
from textrnn.inference import classify_logits
from textrnn.nets import CELLS, CharLM, RNNClassifier
from textrnn.tokenization import encode_batch

ROOT = Path(__file__).resolve().parent.parent


def _variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    data = args.shared
    runs = []
    for cell in CELLS:
        for bi in (False, True):
            name = f"cls-{cell}{'-bi' if bi else ''}"
            runs.append((name, ["classify", "--train", str(data / "sst2" / "train_phrases.tsv"),
                                "--dev", str(data / "sst2" / "dev.tsv"), "--cell", cell,
                                "--label-names", "negative,positive", "--embedding-dim", "128",
                                "--hidden-size", "128", "--dropout", "0.5", "--pooling", "max",
                                "--max-steps", str(args.classify_steps), "--eval-every",
                                str(args.classify_steps // 6), "--patience", "0"]
                         + (["--bidirectional"] if bi else [])))
    for cell in CELLS:
        runs.append((f"lm-{cell}", ["lm", "--text", str(data / "tinyshakespeare" / "input.txt"),
                                    "--cell", cell, "--num-layers", "2", "--hidden-size", "256",
                                    "--embedding-dim", "64", "--dropout", "0.1", "--bptt", "64",
                                    "--streams", "32", "--max-steps", str(args.lm_steps),
                                    "--eval-every", str(args.lm_steps // 6), "--patience", "0"]))
    return runs


def _train(name: str, cli: list[str], out: Path, seed: int) -> None:
    cmd = [sys.executable, "-m", "training", *cli, "--seed", str(seed), "--threads", "1",
           "--warmup-steps", "100", "--overwrite", "--no-progress",
           "--out", str(out / "models" / name), "--work-dir", str(out / "work" / name)]
    log = (out / f"{name}.log").open("w")
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _speed(folder: Path, texts: list[str]) -> float:
    """Classifier: texts/s at batch 64; language model: characters/s generated at batch 1."""
    torch.set_num_threads(1)
    art = load_artifact(folder)
    with torch.inference_mode():
        if isinstance(art.net, RNNClassifier):
            seqs = encode_batch(art.tokenizer, texts)
            start = time.perf_counter()
            for i in range(0, len(seqs), 64):
                torch.softmax(classify_logits(art.net, seqs[i:i + 64]), -1)
            return len(seqs) / (time.perf_counter() - start)
        assert isinstance(art.net, CharLM)
        ids, state = torch.zeros(1, dtype=torch.long), None
        start = time.perf_counter()
        for _ in range(500):
            logits, state = art.net.step(ids, state)
            ids = logits.argmax(-1)
        return 500 / (time.perf_counter() - start)


def _curve(work: Path, metric: str) -> tuple[list[int], list[float]]:
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    return [r["step"] for r in evals], [r["eval"][metric] for r in evals]


def _report(args: argparse.Namespace, names: list[str]) -> str:
    out = args.out
    texts = [line.split("\t", 1)[1] for line in
             (args.shared / "sst2" / "dev.tsv").read_text().splitlines()[1:]]
    rows = ["| model | cell | bidirectional | parameters | dev accuracy / val bits per char | "
            "training time (s) | inference speed |", "|---|---|---|---|---|---|---|"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        config = json.loads((out / "models" / name / "config.json").read_text())
        arch, train = config["architecture"], config["training"]
        speed = _speed(out / "models" / name, texts)
        if config["task"] == "classification":
            figure = f"{config['metrics']['dev']['accuracy']:.4f}"
            unit = f"{speed:,.0f} texts/s"
            steps, values = _curve(out / "work" / name, "accuracy")
            left.plot(steps, values, "o-", label=name)
        else:
            figure = f"{config['metrics']['validation']['bits_per_char']:.4f} bits"
            unit = f"{speed:,.0f} chars/s"
            steps, values = _curve(out / "work" / name, "loss")
            right.plot(steps, [v / math.log(2) for v in values], "o-", label=name)
        rows.append(f"| {name} | {arch['cell']} | {'yes' if arch['bidirectional'] else 'no'} | "
                    f"{config['parameters']:,} | {figure} | {train['wall_time_s']:.0f} | {unit} |")
    left.set(xlabel="step", ylabel="SST-2 dev accuracy", title="classification")
    right.set(xlabel="step", ylabel="validation bits per char", title="language model")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "compare.png", dpi=90)
    plt.close(fig)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Train all variants (two at a time), then write the table and the plot."""
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__)
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    p.add_argument("--classify-steps", type=int, default=3600)
    p.add_argument("--lm-steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    p.add_argument("--report-only", action="store_true", help="skip training; report what exists")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = _variants(args)
    if not args.report_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda v: _train(v[0], v[1], args.out, args.seed), variants))
    table = _report(args, [name for name, _ in variants])
    intro = (f"Same seed ({args.seed}) and sizes per task; classifiers: embedding 128, hidden 128, "
             f"max pooling, {args.classify_steps} steps of 64 SST-2 phrases; language models: "
             f"2×256, {args.lm_steps} steps of 32×64 characters. One torch thread each, "
             f"{args.jobs} trainings at a time on this machine. Inference speed: classifiers on "
             "SST-2 dev at batch 64; language models generating at batch 1.")
    # Both pages live in docs/, beside the plot.
    block = f"{intro}\n\n{table}\n\n![validation curves by cell](compare.png)\n"
    (ROOT / "docs" / "compare.md").write_text("# RNN vs LSTM vs GRU\n\n" + block)
    guide = ROOT / "docs" / "training.md"
    text = guide.read_text()
    start, end = "<!-- compare:start -->\n", "<!-- compare:end -->"
    if start in text:
        text = text.split(start)[0] + start + block + end + text.split(end, 1)[1]
        guide.write_text(text)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
