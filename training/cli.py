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
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net
from textrnn.tokenization import build_char_tokenizer, build_word_tokenizer, encode_batch

from .classify import ClassifierJob, classification_report, predict
from .data import DataError, read_examples, read_text, split_examples
from .device import PrecisionUnsupported, check_precision
from .distributed import Cluster, Part, init_cluster, shutdown_cluster
from .export import export_model
from .lm import LMJob, char_ids, stream_loss
from .options import (
    UsageError,
    available_cores,
    build_parser,
    check_out,
    default_threads,
    resolve_work_dir,
)
from .pretrain import BiLM, BiLMJob, chunk_sentences, load_encoder, save_encoder
from .train import CheckpointMismatch, TooShort, TrainConfig, WorkDirBusy, fit

__all__ = ["build_parser", "main"]


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


def portable(path: Path | str) -> str:
    """A path as recorded in a model folder: relative to the working directory when inside
    it, else the file's name alone (a model folder does not carry a machine's layout)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _provenance(args: argparse.Namespace, paths: list[Path], cfg: TrainConfig,
                result: Any, hyper: dict[str, Any]) -> dict[str, Any]:
    command = [portable(a) if a.startswith("/") else a for a in args.argv]
    return {
        "data": [{"path": portable(p), "sha256": sha256_file(p)} for p in paths],
        "data_sha256": sha256_file(paths[0]),
        "command": "python -m training " + shlex.join(command),
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
        raise UsageError(f"--label-names gives {len(names)} names for {len(values)} labels")
    if args.dev is not None and args.dev_fraction is not None:
        raise UsageError("give --dev or --dev-fraction, not both")
    if args.dev is not None:
        dev = read_examples(args.dev, args.text_column, args.label_column, values)
    else:
        train, dev = split_examples(train, args.dev_fraction or 0.1, args.seed)
        if not dev:
            raise UsageError(f"--dev-fraction: {args.train} has no label with two examples "
                             "to hold one out; give a --dev file")
        if args.cluster.is_main:
            print(f"dev set: {len(dev)} of the {len(train) + len(dev)} examples of {args.train} "
                  "held out (--dev-fraction)", file=sys.stderr)
    pretrained = load_encoder(args.init_from) if args.init_from else None
    if pretrained is not None:
        tokenizer = Tokenizer.from_str(pretrained["tokenizer"])
        arch = pretrained["architecture"]
        defaults = {"cell": "lstm", "embedding_dim": None, "hidden_size": None, "num_layers": 1,
                    "bidirectional": False}
        for key, default in defaults.items():
            given = getattr(args, key)
            if given not in (default, arch[key]):
                raise UsageError(f"--{key.replace('_', '-')} {given} differs from the "
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
                raise UsageError(f"--keep-head needs the encoder's labels {theirs} to be "
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
    result = fit(job, cfg, args.work_dir, resume=args.resume)
    args.distributed = _distributed(args.cluster, cfg.batch_size, "texts")
    if not args.cluster.is_main:  # rank 0 exports
        return 0
    net.load_state_dict(result.best_state)
    net.eval()
    with torch.inference_mode():
        dev_report = job.evaluate()
    hyper = {"word_dropout": args.word_dropout, "min_frequency": args.min_frequency,
             "dev_fraction": None if args.dev is not None else args.dev_fraction or 0.1,
             "max_vocab": args.max_vocab, "freeze_embedding": args.freeze_embedding}
    if pretrained is not None:
        hyper |= {"init_from": portable(args.init_from), "keep_head": args.keep_head,
                  "pretraining": pretrained["provenance"]}
    extra = {"labels": names, "label_values": values, "max_length": args.max_length,
             "training": _provenance(args, [args.train] + ([args.dev] if args.dev else []),
                                     cfg, result, hyper),
             "metrics": {"dev": dev_report}}
    export_model(args.out, net, tokenizer, extra, result.history, "accuracy")
    print(f"dev accuracy {dev_report['accuracy']:.4f}, macro F1 {dev_report['macro_f1']:.4f}; "
          f"wrote {args.out}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    if not 0 < args.val_fraction < 1:
        raise UsageError("--val-fraction must be between 0 and 1")
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
    result = fit(job, cfg, args.work_dir, resume=args.resume)
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
            raise UsageError("--val-fraction must be between 0 and 1")
        cut = int(len(text) * (1 - args.val_fraction))
        train_text, val_text = text[:cut], text[cut:]
    need = args.streams * (args.bptt + 1) + 1
    if len(train_text) < need:
        raise UsageError(f"--text {args.text}: the training part has {len(train_text):,} "
                         f"characters; --streams {args.streams} windows of --bptt {args.bptt} "
                         f"need at least {need:,}: give a longer text, or lower --streams or "
                         "--bptt")
    if len(val_text) < 2:
        raise UsageError(f"the validation text has {len(val_text)} character(s); at least 2 "
                         "are needed: raise --val-fraction or give --val-text")
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
        raise UsageError(f"--streams {args.streams} is fewer than the "
                         f"{args.cluster.world_size} processes; each needs a stream")
    job = LMJob(net, char_ids(tokenizer, train_text), val_ids, args.streams, args.bptt, cfg.seed,
                eval_streams=min(16, len(val_text) - 1), part=args.cluster.part)
    result = fit(job, cfg, args.work_dir, resume=args.resume)
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


def _start(args: argparse.Namespace) -> None:
    """Where a training run writes, checked before any work; its first log line."""
    check_out(args.out, args.overwrite)
    args.work_dir = resolve_work_dir(args.out, args.work_dir)
    if args.cluster.is_main:
        print(f"{args.command}: {args.threads} torch thread(s) (this machine has "
              f"{available_cores()} cores), device {args.device}, "
              f"{args.cluster.world_size} process(es); work dir {args.work_dir}; "
              f"writes {args.out}", file=sys.stderr)


def main(argv: list[str] | None = None, prog: str = "python -m training") -> int:
    """Run the command line; bad flags, bad data or a bad model folder exit 2 with the reason."""
    args = build_parser(prog, __doc__).parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # recorded as the exact command
    if getattr(args, "threads", 0) is None:
        args.threads = default_threads()
    torch.set_num_threads(getattr(args, "threads", None) or default_threads())
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
    done = False
    try:
        if args.command != "evaluate":
            _start(args)
        commands = {"classify": _classify, "pretrain": _pretrain, "lm": _lm, "evaluate": _evaluate}
        code = commands[args.command](args)
        done = True
        return code
    except (DataError, ArtifactError, WorkDirBusy, CheckpointMismatch, PrecisionUnsupported,
            UsageError, TooShort) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:  # a rank that failed leaves at once: torchrun then stops the others
        shutdown_cluster(together=done)

