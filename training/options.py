"""The training command line: its flags (each with a help text and its default shown), the
checks on their values, and where a run writes (the model folder, the work dir)."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from textrnn.nets import CELLS, POOLINGS

from .device import PRECISIONS

__all__ = ["UsageError", "available_cores", "build_parser", "check_out", "default_threads",
           "resolve_work_dir"]

WORK_ROOT = Path("runs") / "work"


class UsageError(Exception):
    """A flag's value that cannot work; the message names the flag and the way out (exit 2)."""


def _number(kind: type[int] | type[float], low: float, high: float | None = None,
            low_open: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a number of `kind` in [low, high] (low excluded when `low_open`)."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}"
                                             ) from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bound = f"{'above' if low_open else 'at least'} {low:g}"
            bound += f" and at most {high:g}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bound}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = _number(int, 1)
COUNT = _number(int, 0)
RATE = _number(float, 0.0, low_open=True)
NONNEGATIVE = _number(float, 0.0)
PROBABILITY = _number(float, 0.0, 1.0)
FRACTION = _number(float, 0.0, 1.0, low_open=True)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """Torch threads when --threads is not given: the cores, shared by torchrun's local ranks."""
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_work_dir(out: Path, work_dir: Path | None) -> Path:
    """The run's work dir (checkpoints, metric log): `work_dir` as given, or
    runs/work/<name>-<8 hex digits of the output path>, so two outputs of the same name keep
    apart and a rerun of one command finds its checkpoint. Never inside the output."""
    if work_dir is None:
        digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
        return WORK_ROOT / f"{out.stem}-{digest}"
    inside = work_dir.resolve()
    if inside == out.resolve() or out.resolve() in inside.parents:
        raise UsageError(f"--work-dir {work_dir} is inside --out {out}: the checkpoints would "
                         "be exported with the model; give a work dir outside it")
    return work_dir


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an existing model folder (or encoder file) without --overwrite."""
    if overwrite or not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    raise UsageError(f"--out {out} already exists; pass --overwrite to replace what it holds, "
                     "or name another folder")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, where it has one the help does not already give."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _common(p: argparse.ArgumentParser, lr: float, batch: int, out_help: str) -> None:
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--overwrite", action="store_true",
                   help="write over --out when it already exists (refused without it)")
    p.add_argument("--work-dir", type=Path,
                   help="checkpoints and the metric log (default: runs/work/<name>-<hash of "
                        "--out>; never inside --out)")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's checkpoint")
    p.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell")
    p.add_argument("--embedding-dim", type=POSITIVE,
                   help="embedding size (default: 128 classify, 200 pretrain, 64 lm)")
    p.add_argument("--hidden-size", type=POSITIVE,
                   help="recurrent state size (default: 256 classify and pretrain, 512 lm)")
    p.add_argument("--num-layers", type=POSITIVE, default=1, help="stacked recurrent layers")
    p.add_argument("--dropout", type=PROBABILITY, default=0.3,
                   help="dropout between layers and before the head")
    p.add_argument("--seed", type=int, default=0, help="the run's seed; same seed, same run")
    p.add_argument("--epochs", type=POSITIVE, default=10, help="passes over the data at most")
    p.add_argument("--max-steps", type=POSITIVE,
                   help="stop after this many optimiser steps (the schedule ends there)")
    p.add_argument("--max-minutes", type=RATE,
                   help="stop after this much training time (the schedule ends there)")
    p.add_argument("--batch-size", type=POSITIVE, default=batch, help="examples per step")
    p.add_argument("--lr", type=NONNEGATIVE, default=lr, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=NONNEGATIVE, default=0.01, help="AdamW weight decay")
    p.add_argument("--clip", type=RATE, default=1.0, help="gradient-norm clipping")
    p.add_argument("--warmup-ratio", type=PROBABILITY, default=0.05,
                   help="linear warm-up over this share of the run's steps, then cosine decay")
    p.add_argument("--warmup-steps", type=COUNT,
                   help="warm-up steps instead of --warmup-ratio (at most half the run)")
    p.add_argument("--eval-every", type=COUNT, default=0, help="steps; 0 = every epoch")
    p.add_argument("--patience", type=COUNT, default=5, help="evaluations without gain; 0 = off")
    p.add_argument("--checkpoint-every", type=COUNT, default=200,
                   help="steps between checkpoints; 0 = at evaluations only")
    p.add_argument("--threads", type=POSITIVE,
                   help=f"torch threads (default: the machine's cores, {available_cores()} "
                        "here, shared by torchrun's processes)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (training device); under torchrun cpu or cuda")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: mixed precision (autocast; fp16 with loss scaling, GPU only)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (a bar on a terminal, else a log line every 5%%)")


def _classify(c: argparse.ArgumentParser) -> None:
    c.add_argument("--train", type=Path, required=True, help=".tsv, .csv or .jsonl")
    c.add_argument("--dev", type=Path, help="dev set (model selection); without it, "
                                            "--dev-fraction of --train is held out")
    c.add_argument("--dev-fraction", type=FRACTION,
                   help="share of --train held out as the dev set, stratified by label and "
                        "drawn with --seed (default 0.1 when there is no --dev)")
    c.add_argument("--text-column", default="text", help="the text column's name")
    c.add_argument("--label-column", default="label", help="the label column's name")
    c.add_argument("--labels", help="comma-separated label values (default: those in --train)")
    c.add_argument("--label-names", help="comma-separated names served for the label values")
    c.add_argument("--bidirectional", action="store_true", help="a bidirectional recurrent layer")
    c.add_argument("--pooling", choices=POOLINGS, default="max", help="pooling over positions")
    c.add_argument("--word-dropout", type=PROBABILITY, default=0.0,
                   help="train-time unknown-word rate")
    c.add_argument("--min-frequency", type=POSITIVE, default=1,
                   help="words seen fewer times are unknown")
    c.add_argument("--max-vocab", type=POSITIVE, default=30_000, help="vocabulary size at most")
    c.add_argument("--max-length", type=POSITIVE, default=256,
                   help="tokens kept per text (training and serving)")
    c.add_argument("--init-from", type=Path,
                   help="encoder from `pretrain`: its tokenizer, architecture and weights")
    c.add_argument("--keep-head", action="store_true",
                   help="with --init-from: start from the encoder's label head too (its "
                        "labels must be these, in the same order)")
    c.add_argument("--freeze-embedding", action="store_true",
                   help="keep the word vectors fixed (those of --init-from, say): words seen "
                        "only in pretraining stay where their neighbours are")
    c.add_argument("--lr-decay", type=RATE, default=1.0,
                   help="each layer below the head learns at the rate above it / this (ULMFiT "
                        "used 2.6); 1 = one rate")
    c.add_argument("--unfreeze-every", type=COUNT, default=0,
                   help="steps; train the head alone first, then unfreeze one layer more "
                        "every N steps (gradual unfreezing); 0 = all from the start")
    c.add_argument("--ema", type=_number(float, 0.0, 1.0), default=0.0,
                   help="evaluate and keep a moving average of the weights with this decay "
                        "per step (0.998: about the last 500 steps); 0 = the weights as they are")


def _pretrain(t: argparse.ArgumentParser) -> None:
    t.add_argument("--text", type=Path, required=True, help=".tsv/.csv/.jsonl, or .txt (a line each)")
    t.add_argument("--text-column", default="text", help="the text column's name")
    t.add_argument("--label-column", help="also learn these labels (max-pooled head)")
    t.add_argument("--label-weight", type=NONNEGATIVE, default=1.0, help="weight of the label loss")
    t.add_argument("--vocab-text", type=Path, action="append", default=[],
                   help="more files whose words join the vocabulary (the classifier's data)")
    t.add_argument("--vocab-text-column", default="text", help="their text column's name")
    t.add_argument("--min-frequency", type=POSITIVE, default=3,
                   help="words seen fewer times are unknown")
    t.add_argument("--max-vocab", type=POSITIVE, default=20_000, help="vocabulary size at most")
    t.add_argument("--chunk-length", type=POSITIVE, default=64, help="tokens per training chunk")
    t.add_argument("--val-fraction", type=FRACTION, default=0.02, help="documents held out")
    t.add_argument("--cutoffs", default="2000,8000", help="adaptive softmax cluster bounds")


def _lm(m: argparse.ArgumentParser) -> None:
    m.add_argument("--text", type=Path, required=True, help="UTF-8 plain text")
    m.add_argument("--val-text", type=Path, help="validation text (default: the last part)")
    m.add_argument("--val-fraction", type=FRACTION, default=0.1,
                   help="share of --text held out for validation (without --val-text)")
    m.add_argument("--tie-weights", action="store_true",
                   help="share the embedding and output matrices")
    m.add_argument("--bptt", type=POSITIVE, default=128, help="characters per backprop window")
    m.add_argument("--streams", type=POSITIVE, default=64, help="parallel training streams")


def _evaluate(e: argparse.ArgumentParser) -> None:
    e.add_argument("model", type=Path, help="a model folder")
    e.add_argument("--data", type=Path, required=True,
                   help="labelled file (classifier) or plain text (language model)")
    e.add_argument("--text-column", default="text", help="the text column's name")
    e.add_argument("--label-column", default="label", help="the label column's name")
    e.add_argument("--streams", type=POSITIVE, default=1,
                   help="LM: parallel streams (1 = exact)")
    e.add_argument("--weights", choices=("float32", "float16"), default="float32",
                   help="hold LSTM/GRU weights as the server's RNN_WEIGHTS does (float16 on the "
                        "CPU: the service's default); the recorded figures are float32's")
    e.add_argument("--json", action="store_true", help="print the report as JSON only")


def build_parser(prog: str = "python -m training", description: str | None = None
                 ) -> argparse.ArgumentParser:
    """The command-line interface."""
    fmt = _Help
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="train a text classifier", formatter_class=fmt)
    _classify(c)
    _common(c, lr=2e-3, batch=64, out_help="model folder to write")
    t = sub.add_parser("pretrain", help="pretrain a classifier encoder as a bidirectional LM",
                       formatter_class=fmt)
    _pretrain(t)
    _common(t, lr=2e-3, batch=64, out_help="encoder file to write (for classify --init-from)")
    m = sub.add_parser("lm", help="train a character language model", formatter_class=fmt)
    _lm(m)
    _common(m, lr=3e-3, batch=64, out_help="model folder to write")
    e = sub.add_parser("evaluate", help="evaluate a model folder on a data file",
                       formatter_class=fmt)
    _evaluate(e)
    return parser
