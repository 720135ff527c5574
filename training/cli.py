"""`python -m training classify|pretrain|lm|evaluate`: train, export and evaluate models."""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from textrnn.artifact import ArtifactError, load_artifact, sha256_file
from textrnn.nets import CELLS, POOLINGS, CharLM, NetConfig, RNNClassifier, build_net
from textrnn.tokenization import build_char_tokenizer, build_word_tokenizer, encode_batch

from .classify import ClassifierJob, classification_report, predict
from .data import DataError, read_examples, read_text
from .device import PRECISIONS, PrecisionUnsupported, check_precision
from .distributed import Cluster, Part, init_cluster, shutdown_cluster
from .export import export_model
from .lm import LMJob, char_ids, stream_loss
from .pretrain import BiLM, BiLMJob, chunk_sentences, load_encoder, save_encoder
from .train import CheckpointMismatch, TrainConfig, WorkDirBusy, fit

__all__ = ["main"]


def _common(p: argparse.ArgumentParser, lr: float, batch: int) -> None:
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--work-dir", type=Path, help="checkpoints and logs (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's checkpoint")
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, help="stop after this much training time")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=0, help="steps; 0 = every epoch")
    p.add_argument("--patience", type=int, default=5, help="evaluations without gain; 0 = off")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N (training device); under torchrun cpu or cuda")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: mixed precision (autocast; fp16 with loss scaling, GPU only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="train a text classifier")
    c.add_argument("--train", type=Path, required=True, help=".tsv, .csv or .jsonl")
    c.add_argument("--dev", type=Path, required=True, help="dev set (model selection)")
    c.add_argument("--text-column", default="text")
    c.add_argument("--label-column", default="label")
    c.add_argument("--labels", help="comma-separated label values (default: those in --train)")
    c.add_argument("--label-names", help="comma-separated names served for the label values")
    c.add_argument("--bidirectional", action="store_true")
    c.add_argument("--pooling", choices=POOLINGS, default="max")
    c.add_argument("--word-dropout", type=float, default=0.0, help="train-time unknown-word rate")
    c.add_argument("--min-frequency", type=int, default=1)
    c.add_argument("--max-vocab", type=int, default=30_000)
    c.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    c.add_argument("--init-from", type=Path,
                   help="encoder from `pretrain`: its tokenizer, architecture and weights")
    c.add_argument("--keep-head", action="store_true",
                   help="with --init-from: start from the encoder's label head too (its "
                        "labels must be these, in the same order)")
    c.add_argument("--freeze-embedding", action="store_true",
                   help="keep the word vectors fixed (those of --init-from, say): words seen "
                        "only in pretraining stay where their neighbours are")
    c.add_argument("--lr-decay", type=float, default=1.0,
                   help="each layer below the head learns at the rate above it / this (ULMFiT "
                        "used 2.6); 1 = one rate")
    c.add_argument("--unfreeze-every", type=int, default=0,
                   help="steps; train the head alone first, then unfreeze one layer more "
                        "every N steps (gradual unfreezing); 0 = all from the start")
    c.add_argument("--ema", type=float, default=0.0,
                   help="evaluate and keep a moving average of the weights with this decay "
                        "per step (0.998: about the last 500 steps); 0 = the weights as they are")
    _common(c, lr=2e-3, batch=64)
    t = sub.add_parser("pretrain", help="pretrain a classifier encoder as a bidirectional LM")
    t.add_argument("--text", type=Path, required=True, help=".tsv/.csv/.jsonl, or .txt (a line each)")
    t.add_argument("--text-column", default="text")
    t.add_argument("--label-column", help="also learn these labels (max-pooled head)")
    t.add_argument("--label-weight", type=float, default=1.0, help="weight of the label loss")
    t.add_argument("--vocab-text", type=Path, action="append", default=[],
                   help="more files whose words join the vocabulary (the classifier's data)")
    t.add_argument("--vocab-text-column", default="text")
    t.add_argument("--min-frequency", type=int, default=3)
    t.add_argument("--max-vocab", type=int, default=20_000)
    t.add_argument("--chunk-length", type=int, default=64, help="tokens per training chunk")
    t.add_argument("--val-fraction", type=float, default=0.02, help="documents held out")
    t.add_argument("--cutoffs", default="2000,8000", help="adaptive softmax cluster bounds")
    _common(t, lr=2e-3, batch=64)
    m = sub.add_parser("lm", help="train a character language model")
    m.add_argument("--text", type=Path, required=True, help="UTF-8 plain text")
    m.add_argument("--val-text", type=Path, help="validation text (default: the last part)")
    m.add_argument("--val-fraction", type=float, default=0.1)
    m.add_argument("--tie-weights", action="store_true")
    m.add_argument("--bptt", type=int, default=128, help="characters per backprop window")
    m.add_argument("--streams", type=int, default=64, help="parallel training streams")
    _common(m, lr=3e-3, batch=64)
    e = sub.add_parser("evaluate", help="evaluate a model folder on a data file")
    e.add_argument("model", type=Path)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--text-column", default="text")
    e.add_argument("--label-column", default="label")
    e.add_argument("--streams", type=int, default=1, help="LM: parallel streams (1 = exact)")
    e.add_argument("--weights", choices=("float32", "float16"), default="float32",
                   help="hold LSTM/GRU weights as the server's RNN_WEIGHTS does (float16 on the "
                        "CPU: the service's default); the recorded figures are float32's")
    e.add_argument("--json", action="store_true", help="print the report as JSON only")
    return parser


def _train_config(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(**values, progress=not args.no_progress)


def _distributed(cluster: Cluster, global_batch: int, unit: str) -> dict[str, Any]:
    """The data-parallel set-up, as recorded in the training provenance (texts and chunks
    are dealt out strided, streams in contiguous ranges)."""
    rows = list(range(global_batch))
    parts = [Part(r, cluster.world_size) for r in range(cluster.world_size)]
    shares = [len(rows[p.span(global_batch)] if unit == "streams" else p.strided(rows))
              for p in parts]
    return cluster.to_dict() | {"global_batch_size": global_batch,
                                "per_rank_batch_size": shares, "batch_unit": unit}


def _provenance(args: argparse.Namespace, paths: list[Path], cfg: TrainConfig,
                result: Any, hyper: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": [{"path": str(p), "sha256": sha256_file(p)} for p in paths],
        "data_sha256": sha256_file(paths[0]),
        "command": "python -m training " + shlex.join(args.argv),
        "hyperparameters": asdict(cfg) | hyper,
        "seed": cfg.seed, "steps": result.steps, "epochs": result.epochs,
        "wall_time_s": result.wall_time_s, "stopped_because": result.stopped_because,
        "device": str(args.device), "threads": cfg.threads, "torch_version": torch.__version__,
        "precision": cfg.precision, "distributed": args.distributed,
    }


def _classify(args: argparse.Namespace) -> int:
    values = args.labels.split(",") if args.labels else None
    train = read_examples(args.train, args.text_column, args.label_column, values)
    values = values or sorted({ex.label for ex in train})
    names = args.label_names.split(",") if args.label_names else values
    if len(names) != len(values):
        raise SystemExit(f"error: --label-names gives {len(names)} names for {len(values)} labels")
    dev = read_examples(args.dev, args.text_column, args.label_column, values)
    pretrained = load_encoder(args.init_from) if args.init_from else None
    if pretrained is not None:
        tokenizer = Tokenizer.from_str(pretrained["tokenizer"])
        arch = pretrained["architecture"]
        defaults = {"cell": "lstm", "embedding_dim": None, "hidden_size": None, "num_layers": 1,
                    "bidirectional": False}
        for key, default in defaults.items():
            given = getattr(args, key)
            if given not in (default, arch[key]):
                raise SystemExit(f"error: --{key.replace('_', '-')} {given} differs from the "
                                 f"encoder's {arch[key]} ({args.init_from})")
            setattr(args, key, arch[key])
    else:
        tokenizer = build_word_tokenizer([ex.text for ex in train],
                                         min_frequency=args.min_frequency, max_vocab=args.max_vocab)

    def encode(examples: list[Any]) -> tuple[list[list[int]], list[int]]:
        ids = encode_batch(tokenizer, [ex.text for ex in examples])
        return [s[: args.max_length] for s in ids], [values.index(ex.label) for ex in examples]

    net_cfg = NetConfig(task="classification", vocab_size=tokenizer.get_vocab_size(),
                        cell=args.cell, embedding_dim=args.embedding_dim or 128,
                        hidden_size=args.hidden_size or 256, num_layers=args.num_layers,
                        bidirectional=args.bidirectional, dropout=args.dropout,
                        pooling=args.pooling, num_labels=len(values))
    cfg = _train_config(args)
    torch.manual_seed(cfg.seed)
    net = build_net(net_cfg)
    assert isinstance(net, RNNClassifier)
    if pretrained is not None:  # the head is new for these labels unless --keep-head
        if args.keep_head:
            theirs = pretrained["provenance"]["hyperparameters"].get("labels")
            if theirs != values:
                raise SystemExit(f"error: --keep-head needs the encoder's labels {theirs} to be "
                                 f"this data's {values}")
            net.load_state_dict(pretrained["state_dict"])
        else:
            encoder = {k: v for k, v in pretrained["state_dict"].items()
                       if not k.startswith("head.")}
            missing = net.load_state_dict(encoder, strict=False).missing_keys
            assert sorted(missing) == ["head.bias", "head.weight"], missing
    net.embedding.weight.requires_grad_(not args.freeze_embedding)
    net = net.to(args.device)
    job = ClassifierJob(net, encode(train), encode(dev), names, cfg.batch_size, cfg.seed,
                        args.word_dropout, args.cluster.part)
    result = fit(job, cfg, args.work_dir or Path("runs") / args.out.name, resume=args.resume)
    args.distributed = _distributed(args.cluster, cfg.batch_size, "texts")
    if not args.cluster.is_main:  # rank 0 exports
        return 0
    net.load_state_dict(result.best_state)
    net.eval()
    with torch.inference_mode():
        dev_report = job.evaluate()
    hyper = {"word_dropout": args.word_dropout, "min_frequency": args.min_frequency,
             "max_vocab": args.max_vocab, "freeze_embedding": args.freeze_embedding}
    if pretrained is not None:
        hyper |= {"init_from": str(args.init_from), "keep_head": args.keep_head,
                  "pretraining": pretrained["provenance"]}
    extra = {"labels": names, "label_values": values, "max_length": args.max_length,
             "training": _provenance(args, [args.train, args.dev], cfg, result, hyper),
             "metrics": {"dev": dev_report}}
    export_model(args.out, net, tokenizer, extra, result.history, "accuracy")
    print(f"dev accuracy {dev_report['accuracy']:.4f}, macro F1 {dev_report['macro_f1']:.4f}; "
          f"wrote {args.out}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    if not 0 < args.val_fraction < 1:
        raise SystemExit("error: --val-fraction must be between 0 and 1")
    docs = read_examples(args.text, args.text_column, args.label_column)
    values = sorted({d.label for d in docs}) if args.label_column else []
    extra = [ex.text for path in args.vocab_text
             for ex in read_examples(path, args.vocab_text_column, None)]
    tokenizer = build_word_tokenizer([d.text for d in docs] + extra,
                                     min_frequency=args.min_frequency, max_vocab=args.max_vocab)
    vocab = tokenizer.get_vocab_size()
    held_out = random.Random(args.seed).sample(range(len(docs)),
                                               max(1, int(len(docs) * args.val_fraction)))
    split: dict[bool, tuple[list[list[int]], list[int]]] = {True: ([], []), False: ([], [])}
    val_rows = set(held_out)
    for row, enc in enumerate(tokenizer.encode_batch([d.text for d in docs],
                                                     add_special_tokens=False)):
        ids, labels = split[row in val_rows]
        chunks = chunk_sentences(enc.tokens, enc.ids, args.chunk_length)
        ids.extend(chunks)
        if values:
            labels.extend([values.index(docs[row].label)] * len(chunks))
    hidden = args.hidden_size or 256
    net_cfg = NetConfig(task="classification", vocab_size=vocab,
                        cell=args.cell, embedding_dim=args.embedding_dim or 200,
                        hidden_size=hidden, num_layers=args.num_layers, bidirectional=True,
                        dropout=args.dropout, pooling="max", num_labels=max(2, len(values)))
    cfg = _train_config(args)
    torch.manual_seed(cfg.seed)
    encoder = build_net(net_cfg)
    assert isinstance(encoder, RNNClassifier)
    # Cluster bounds past a small vocabulary are dropped (one cluster at half of it remains).
    cutoffs = [c for c in (int(c) for c in args.cutoffs.split(",")) if c < vocab - 1]
    cutoffs = cutoffs or [max(1, vocab // 2)]
    net = BiLM(encoder, cutoffs).to(args.device)
    train_ids, train_labels = split[False]
    val_ids, val_labels = split[True]
    if args.cluster.is_main:
        print(f"{len(docs)} documents -> {len(train_ids)} training chunks "
              f"({sum(map(len, train_ids))} tokens), {len(val_ids)} validation chunks; "
              f"vocabulary {vocab}", file=sys.stderr)
    job = BiLMJob(net, (train_ids, train_labels if values else None),
                  (val_ids, val_labels if values else None), cfg.batch_size, cfg.seed,
                  args.label_weight, args.cluster.part)
    result = fit(job, cfg, args.work_dir or Path("runs") / args.out.stem, resume=args.resume)
    args.distributed = _distributed(args.cluster, cfg.batch_size, "chunks")
    if not args.cluster.is_main:  # rank 0 exports
        return 0
    net.load_state_dict(result.best_state)
    hyper = {"label_column": args.label_column, "label_weight": args.label_weight,
             "min_frequency": args.min_frequency, "max_vocab": args.max_vocab,
             "chunk_length": args.chunk_length, "val_fraction": args.val_fraction,
             "cutoffs": ",".join(map(str, cutoffs)), "labels": values}
    paths = [args.text, *args.vocab_text]
    provenance = _provenance(args, paths, cfg, result, hyper) | {"validation": result.best_eval}
    save_encoder(args.out, encoder, tokenizer.to_str(), provenance)
    print(f"validation LM loss {result.best_eval.get('loss', float('nan')):.4f} nats/word; "
          f"wrote {args.out}")
    return 0


def _lm(args: argparse.Namespace) -> int:
    text = read_text(args.text)
    if args.val_text:
        train_text, val_text = text, read_text(args.val_text)
    else:
        if not 0 < args.val_fraction < 1:
            raise SystemExit("error: --val-fraction must be between 0 and 1")
        cut = int(len(text) * (1 - args.val_fraction))
        train_text, val_text = text[:cut], text[cut:]
    tokenizer = build_char_tokenizer(train_text)

    hidden = args.hidden_size or 512
    net_cfg = NetConfig(task="generation", vocab_size=tokenizer.get_vocab_size(), cell=args.cell,
                        embedding_dim=args.embedding_dim or (hidden if args.tie_weights else 64),
                        hidden_size=hidden, num_layers=args.num_layers, dropout=args.dropout,
                        tie_weights=args.tie_weights)
    cfg = _train_config(args)
    torch.manual_seed(cfg.seed)
    net = build_net(net_cfg).to(args.device)
    assert isinstance(net, CharLM)
    val_ids = char_ids(tokenizer, val_text)
    if args.streams < args.cluster.world_size:
        raise SystemExit(f"error: --streams {args.streams} is fewer than the "
                         f"{args.cluster.world_size} processes; each needs a stream")
    job = LMJob(net, char_ids(tokenizer, train_text), val_ids, args.streams, args.bptt, cfg.seed,
                part=args.cluster.part)
    result = fit(job, cfg, args.work_dir or Path("runs") / args.out.name, resume=args.resume)
    args.distributed = _distributed(args.cluster, args.streams, "streams")
    if not args.cluster.is_main:  # rank 0 exports
        return 0
    net.load_state_dict(result.best_state)
    net.eval()
    with torch.inference_mode():
        loss = stream_loss(net, val_ids, streams=1)
    val = {"loss": loss, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss),
           "characters": len(val_text), "read_as": "one stream, state carried"}
    hyper = {"bptt": args.bptt, "streams": args.streams, "val_fraction": args.val_fraction}
    paths = [args.text] + ([args.val_text] if args.val_text else [])
    extra = {"max_length": None,
             "training": _provenance(args, paths, cfg, result, hyper),
             "metrics": {"validation": val}}
    export_model(args.out, net, tokenizer, extra, result.history, "loss")
    print(f"validation loss {loss:.4f} nats/char ({val['bits_per_char']:.4f} bits); "
          f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.model, weights=args.weights)
    report: dict[str, Any]
    with torch.inference_mode():
        if isinstance(artifact.net, RNNClassifier):
            values = artifact.config.get("label_values") or artifact.labels
            examples = read_examples(args.data, args.text_column, args.label_column, values)
            max_length = artifact.config.get("max_length") or 10**9
            seqs = [s[:max_length] for s in
                    encode_batch(artifact.tokenizer, [ex.text for ex in examples])]
            pred = predict(artifact.net, seqs).argmax(1).tolist()
            gold = [values.index(ex.label) for ex in examples]
            report = classification_report(artifact.labels, gold, pred)
        else:
            text = read_text(args.data)
            loss = stream_loss(artifact.net, char_ids(artifact.tokenizer, text),
                               streams=args.streams)
            report = {"loss": loss, "bits_per_char": loss / math.log(2),
                      "perplexity": math.exp(loss), "characters": len(text)}
    report["weights"] = artifact.weights
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad data or a bad model folder exits 2 with the reason."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # recorded as the exact command
    torch.set_num_threads(getattr(args, "threads", 1))
    if str(getattr(args, "device", "cpu")).startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls where the GPU has them
    args.cluster = Cluster()
    if args.command != "evaluate":
        try:  # joins the other ranks under torchrun
            check_precision(args.precision, args.device)
            args.cluster, args.device = init_cluster(args.device)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        commands = {"classify": _classify, "pretrain": _pretrain, "lm": _lm, "evaluate": _evaluate}
        return commands[args.command](args)
    except (DataError, ArtifactError, WorkDirBusy, CheckpointMismatch, PrecisionUnsupported) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_cluster()
