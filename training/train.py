"""The training loop shared by both tasks: AdamW, clipping, warm-up + cosine schedule,
evaluation, early stopping, best-weights tracking, and checkpoints that resume exactly; in one
process or data-parallel under torchrun (rank 0 evaluates, logs and writes), in fp32 or mixed
precision."""

from __future__ import annotations

import fcntl
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import distributed
from .device import autocast, check_precision, grad_scaler
from .progress import Progress

__all__ = ["CheckpointMismatch", "FitResult", "Job", "TooShort", "TrainConfig", "WorkDirBusy", "fit"]

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
LOG_FILE = "metrics.jsonl"


class WorkDirBusy(Exception):
    """Another training run holds the work dir."""


class CheckpointMismatch(Exception):
    """The checkpoint to resume was written by another set-up (world size, architecture)."""


class TooShort(Exception):
    """The data gives no batch for an epoch."""


# A run of fewer optimiser steps rarely learns anything: the command says so at its start.
FEW_STEPS = 100


@dataclass
class TrainConfig:
    """Optimisation settings common to both tasks (saved into config.json)."""

    seed: int = 0
    epochs: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    warmup_steps: int | None = None  # None: warmup_ratio of the run's steps
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.05
    eval_every: int = 0  # steps; 0 = once per epoch
    patience: int = 5  # evaluations without improvement before stopping; 0 = never stop
    checkpoint_every: int = 200  # steps; 0 = only at evaluations
    threads: int = 1
    log_every: int = 20
    progress: bool = True
    lr_decay: float = 1.0  # each layer below the top learns at the rate above / this (ULMFiT)
    unfreeze_every: int = 0  # steps; > 0: the top layer trains alone, one more every N steps
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 with a loss scaler)


class Job(Protocol):
    """What a task supplies to `fit`."""

    metric: str  # the key of evaluate() used for selection
    higher_is_better: bool

    @property
    def net(self) -> nn.Module: ...

    def batches(self, epoch: int) -> Sequence[Any]: ...
    def loss(self, batch: Any) -> tuple[Tensor, int]: ...  # mean loss, items (for speed)
    def evaluate(self) -> dict[str, Any]: ...
    def extra_state(self) -> dict[str, Tensor]: ...
    def load_extra_state(self, state: dict[str, Tensor]) -> None: ...
    # Optional: `layers() -> list[list[tuple[str, Parameter]]]`, the net's parameters by
    # layer from the top (the head) down, for `lr_decay` and `unfreeze_every`; without it
    # the whole net is one layer. `unused_parameters = True` when a step may leave some
    # parameters without a gradient (DDP must then look for them).
    # Under torchrun every rank gets the same global batches from `batches`, and `loss`
    # returns this rank's share of the batch's mean loss: the ranks' shares (and their
    # gradients, which DDP sums) add up to the mean of one process.


@dataclass
class FitResult:
    """What training produced: the best weights and their evaluation, and the history."""

    best_state: dict[str, Tensor]
    best_eval: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    wall_time_s: float = 0.0
    stopped_because: str = ""


class _Schedule:
    """Linear warm-up, then cosine decay to `min_lr_ratio` at step `total`.

    The warm-up is `warmup_ratio` of the run's steps, or `warmup_steps` cut to half the run,
    so that a short run reaches its peak rate. With a time budget (`max_minutes`), `total`
    shrinks once to the steps the budget allows: the speed is measured between a first mark,
    taken halfway to the fit point so that start-up (a GPU's slow first steps) is behind it,
    and the fit point (up to 200 steps in, or 2.5% and 5% of the budget, whichever comes
    first); a tenth of the budget is left for evaluations. The decay also follows the clock
    (whichever of steps and time is further along), so the rate has reached its end when time
    is up even if the run slows down after the fit. (Plain numbers only: LambdaLR checkpoints
    the object's attributes, and restores them on resume.)"""

    def __init__(self, cfg: TrainConfig, total: int) -> None:
        self.explicit, self.ratio = cfg.warmup_steps, cfg.warmup_ratio
        self.floor, self.total = cfg.min_lr_ratio, total
        self.warmup = self._warmup(total)
        self.limit_s = None if cfg.max_minutes is None else cfg.max_minutes * 60
        span = min(200, max(20, total // 20))
        self.mark_at, self.fit_at = span - span // 2, span
        self.mark: tuple[int, float] | None = None
        self.fitted = self.limit_s is None
        self.warm_s: float | None = None  # training time when the warm-up ended
        self.time_progress = 0.0

    def _warmup(self, total: int) -> int:
        if self.explicit is not None:
            return min(self.explicit, total // 2)
        return round(self.ratio * total)

    def observe(self, step: int, seconds: float) -> None:
        """After each optimiser step (`seconds` of training so far): take the marks, fit."""
        if self.limit_s is None:
            return
        if self.warm_s is None and step >= self.warmup:
            self.warm_s = seconds
        if self.warm_s is not None:
            self.time_progress = min(1.0, (seconds - self.warm_s)
                                     / max(1e-9, self.limit_s - self.warm_s))
        if self.fitted:
            return
        if self.mark is None:
            if step >= self.mark_at or seconds >= 0.025 * self.limit_s:
                self.mark = (step, seconds)
        elif step >= self.fit_at or seconds >= 0.05 * self.limit_s:
            (step0, t0), budget_s = self.mark, 0.9 * self.limit_s
            if seconds > t0 and step > step0:
                rate = (step - step0) / (seconds - t0)
                self.total = min(self.total, max(step + 1, step + int(rate * (budget_s - seconds))))
                self.warmup = max(min(self.warmup, self._warmup(self.total)), 0)
            self.fitted = True

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        progress = max(progress, self.time_progress)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


Layer = list[tuple[str, nn.Parameter]]


def _layers(job: Job) -> list[Layer]:
    layers = getattr(job, "layers", None)
    return list(layers()) if layers is not None else [list(job.net.named_parameters())]


def _param_groups(layers: list[Layer], cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay, biases and word vectors do not; layer k from the top
    learns at lr / lr_decay**k (discriminative fine-tuning, as in ULMFiT)."""
    groups = []
    for depth, layer in enumerate(layers):
        lr = cfg.lr / cfg.lr_decay ** depth
        decay = [p for n, p in layer if p.dim() > 1 and "embedding" not in n]
        rest = [p for n, p in layer if not (p.dim() > 1 and "embedding" not in n)]
        groups += [{"params": ps, "weight_decay": wd, "lr": lr}
                   for ps, wd in ((decay, cfg.weight_decay), (rest, 0.0)) if ps]
    return groups


class _Unfreezing:
    """Gradual unfreezing: layer k from the top trains from step k * every on (the top one
    from the start). A parameter that was frozen to begin with stays frozen. The state
    follows from the step alone, so a resumed run gets it right."""

    def __init__(self, layers: list[Layer], every: int) -> None:
        self.every = every
        self.layers = [[p for _, p in layer if p.requires_grad] for layer in layers]

    def at(self, step: int) -> None:
        if self.every <= 0:
            return
        for depth, params in enumerate(self.layers):
            for p in params:
                p.requires_grad_(step >= depth * self.every)


def _better(job: Job, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if job.higher_is_better else new < best


class _Log:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _claim(work_dir: Path) -> IO[str]:
    """Hold the work dir for this run: a second run pointed at it would overwrite its
    checkpoint and log, so it stops at once instead (the lock goes when the process does)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    handle = (work_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise WorkDirBusy(f"work dir {work_dir} is in use by another training run; give this "
                          "one its own --work-dir") from None
    return handle


class _JobLoss(nn.Module):
    """The job's loss as a module's forward: DDP prepares its gradient all-reduce in forward."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.net, self.job = job.net, job

    def forward(self, batch: Any) -> tuple[Tensor, int]:
        return self.job.loss(batch)


def fit(job: Job, cfg: TrainConfig, work_dir: Path, resume: bool = False) -> FitResult:
    """Train `job.net`; checkpoints and the JSONL log go to `work_dir` (from rank 0 alone)."""
    cluster = distributed.current()
    if cluster.world_size == 1:
        with _claim(work_dir):
            return _fit(job, cfg, work_dir, resume, cluster)
    lock, busy = None, ""
    if cluster.is_main:
        try:
            lock = _claim(work_dir)
        except WorkDirBusy as e:
            busy = str(e)
    busy = distributed.broadcast(busy)  # every rank stops, not rank 0 alone
    if busy:
        raise WorkDirBusy(busy)
    try:
        return _fit(job, cfg, work_dir, resume, cluster)
    finally:
        if lock is not None:
            lock.close()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_architecture(path: Path, theirs: dict[str, Tensor], ours: dict[str, Tensor]) -> None:
    """A one-line refusal when the checkpoint's net is not this run's."""
    for name in sorted(theirs.keys() | ours.keys()):
        if name not in theirs or name not in ours or theirs[name].shape != ours[name].shape:
            have = tuple(theirs[name].shape) if name in theirs else "absent"
            want = tuple(ours[name].shape) if name in ours else "absent"
            raise CheckpointMismatch(
                f"{path} holds another architecture than this run's ({name}: {have} there, "
                f"{want} here); resume with the flags and data it was written with, or start "
                "afresh without --resume (or with another --work-dir)")


def _load_checkpoint(path: Path, resume: bool, cluster: distributed.Cluster) -> Any:
    """The checkpoint to resume from, or None; rank 0 reads it and hands it to the others,
    so ranks on other machines need no shared file system."""
    ck = torch.load(path, weights_only=True) if cluster.is_main and resume and path.exists() \
        else None
    if cluster.is_main and resume and ck is None:
        _say(f"--resume: no checkpoint at {path}; starting afresh")
    if cluster.world_size > 1:
        ck = distributed.broadcast(ck)
    if ck is not None and ck.get("world_size", 1) != cluster.world_size:
        raise CheckpointMismatch(
            f"{path} was written by {ck.get('world_size', 1)} process(es), this run has "
            f"{cluster.world_size}: each rank's data share and random stream are in it, so "
            f"resume with the same number of processes, or start afresh without --resume")
    return ck


def _fit(job: Job, cfg: TrainConfig, work_dir: Path, resume: bool,
         cluster: distributed.Cluster) -> FitResult:
    torch.set_num_threads(cfg.threads)
    # Each rank its own random stream (dropout masks), rank 0 the seed's: the same masks on
    # every rank would drop the same units of different rows.
    torch.manual_seed(cfg.seed + 1_000_003 * cluster.rank)
    main, world = cluster.is_main, cluster.world_size
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)
    net = job.net
    device = next(net.parameters()).device
    check_precision(cfg.precision, device, net)
    scaler = grad_scaler(cfg.precision, device)
    layers = _layers(job)
    optimizer = torch.optim.AdamW(_param_groups(layers, cfg), lr=cfg.lr)
    unfreeze = _Unfreezing(layers, cfg.unfreeze_every)
    # Evaluated and kept instead of the live weights: the average of the last ~1/(1-ema)
    # steps' weights, which does not swing with each batch as the live ones do.
    averaged = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema))  # type: ignore[no-untyped-call]
                if cfg.ema > 0 else None)
    per_epoch = len(job.batches(0))
    if per_epoch == 0:
        raise TooShort("the training data gives no batch: it is shorter than one batch of "
                       "the run's settings")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    schedule = _Schedule(cfg, total)
    if main and total < FEW_STEPS:
        _say(f"warning: this run takes {total} optimiser steps ({per_epoch} a pass over the "
             f"data); a model rarely learns in fewer than {FEW_STEPS}: raise --epochs or "
             "--max-steps, or lower --batch-size")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log = _Log(work_dir / LOG_FILE, main)
    ckpt_path = work_dir / CHECKPOINT_FILE

    step, epoch, start_batch, elapsed_before, bad_evals = 0, 0, 0, 0.0, 0
    best_metric: float | None = None
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best_eval: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    ck = _load_checkpoint(ckpt_path, resume, cluster)
    if ck is not None:
        _check_architecture(ckpt_path, ck["net"], net.state_dict())
        net.load_state_dict(ck["net"])
        try:
            optimizer.load_state_dict(ck["optimizer"])
        except ValueError:
            raise CheckpointMismatch(
                f"{ckpt_path} was written with other optimiser groups (--lr-decay, "
                "--freeze-embedding, --init-from); resume with the flags it was written with, "
                "or start afresh without --resume") from None
        scheduler.load_state_dict(ck["scheduler"])
        own = ck["ranks"][cluster.rank] if world > 1 else ck
        torch.set_rng_state(own["rng"])
        if "cuda_rng" in own and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(own["cuda_rng"])
        job.load_extra_state({k: v.to(device) for k, v in own["extra"].items()})
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        if averaged is not None:
            averaged.load_state_dict(ck["ema"])
        best_state, best_eval, history = ck["best_state"], ck["best_eval"], ck["history"]
        step, epoch, start_batch = ck["step"], ck["epoch"], ck["batch"]
        best_metric, bad_evals, elapsed_before = ck["best_metric"], ck["bad_evals"], ck["elapsed"]
    elif main and work_dir.joinpath(LOG_FILE).exists():
        work_dir.joinpath(LOG_FILE).unlink()
    if world > 1:
        # Gradual unfreezing switches parameters on later: DDP must know them from the start.
        unfreeze.at(2**62)
        model: nn.Module | None = distributed.wrap_ddp(
            _JobLoss(job), device,
            find_unused=cfg.unfreeze_every > 0 or getattr(job, "unused_parameters", False))
    else:
        model = None

    started = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    def rank_state() -> dict[str, Any]:
        """What differs between ranks: the random streams and the job's carried state."""
        extra = job.extra_state()
        return ({"rng": torch.get_rng_state(),
                 "extra": {k: v.cpu() for k, v in extra.items()} if world > 1 else extra}
                | ({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available()
                   else {}))

    def save_checkpoint(next_batch: int, next_epoch: int) -> None:
        own = rank_state()
        ranks = distributed.gather(own) if world > 1 else None  # rank 0 writes them all
        if not main:
            return
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(own | {"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(),
                          "best_state": best_state, "best_eval": best_eval,
                          "history": history, "step": step, "epoch": next_epoch,
                          "batch": next_batch, "best_metric": best_metric,
                          "bad_evals": bad_evals, "elapsed": elapsed(), "config": asdict(cfg)}
                   | ({"ema": averaged.state_dict()} if averaged is not None else {})
                   | ({"scaler": scaler.state_dict()} if scaler is not None else {})
                   | ({"world_size": world, "ranks": ranks} if ranks is not None else {}), tmp)
        tmp.replace(ckpt_path)  # atomic: a kill never leaves half a checkpoint

    def run_eval() -> bool:
        """Evaluate, keep the best weights; True when patience has run out."""
        nonlocal best_metric, best_state, best_eval, bad_evals
        live = None
        if averaged is not None:  # evaluate (and keep) the average in the net's place
            live = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.load_state_dict(averaged.module.state_dict())
        result: dict[str, Any] = {}
        if main:  # the weights are the same on every rank; the others wait for the result
            net.eval()
            with torch.inference_mode():
                result = job.evaluate()
            net.train()
        if world > 1:
            result = distributed.broadcast(result)
        record = {"step": step, "epoch": round(step / per_epoch, 3), "elapsed_s": round(elapsed(), 1),
                  "eval": result}
        history.append(record)
        log.write(record)
        if _better(job, float(result[job.metric]), best_metric):
            best_metric, bad_evals = float(result[job.metric]), 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            best_eval = dict(result, step=step)
        else:
            bad_evals += 1
        if live is not None:
            net.load_state_dict(live)
        if main:
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                    if isinstance(v, float)))
        return cfg.patience > 0 and bad_evals >= cfg.patience

    bar = Progress(total, step, cfg.progress and main)
    stopped = ""
    net.train()
    window_loss, window_items, window_start = 0.0, 0, time.monotonic()
    while not stopped:
        batches = job.batches(epoch)
        for index in range(start_batch, len(batches)):
            unfreeze.at(step)
            with autocast(cfg.precision, device):
                out: tuple[Tensor, int] = (model if model is not None else job.loss)(batches[index])
            loss, items = out
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()  # type: ignore[no-untyped-call]
                grad_norm = nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
                optimizer.step()
            else:  # fp16: clip the true gradient; a step with inf/nan is skipped
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(net)
            step += 1
            now = elapsed()
            if world > 1 and cfg.max_minutes is not None:
                # Rank 0's clock for all (the others contribute 0 to the sum): the schedule
                # fitted to the time budget and the stop must be the same on every rank.
                now = distributed.all_sum([now if main else 0.0], device)[0]
            schedule.observe(step, now)
            window_loss += loss.item()
            window_items += items
            shown: tuple[float, float] | tuple[None, None] = (None, None)
            if step % cfg.log_every == 0:
                if world > 1:  # each rank holds its share of the loss and of the items
                    window_loss, window_items_f = distributed.all_sum(
                        [window_loss, float(window_items)], device)
                    window_items = int(window_items_f)
                speed = window_items / max(1e-9, time.monotonic() - window_start)
                record = {"step": step, "epoch": round(step / per_epoch, 3),
                          "loss": window_loss / cfg.log_every, "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "items_per_s": round(speed, 1),
                          "elapsed_s": round(elapsed(), 1)}
                history.append(record)
                log.write(record)
                shown = (float(record["loss"]), speed)
                window_loss, window_items, window_start = 0.0, 0, time.monotonic()
            bar.update(step, *shown)
            end_of_epoch = index == len(batches) - 1
            due = step % cfg.eval_every == 0 if cfg.eval_every else end_of_epoch
            if step >= total:
                stopped = "max steps reached" if cfg.max_steps is not None else "epochs done"
            elif step >= schedule.total or (cfg.max_minutes is not None
                                            and now >= cfg.max_minutes * 60):
                stopped = "time budget spent"
            if (due or stopped) and run_eval() and not stopped:
                stopped = "early stop: no improvement"
            next_batch, next_epoch = (0, epoch + 1) if end_of_epoch else (index + 1, epoch)
            if stopped or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or due:
                save_checkpoint(next_batch, next_epoch)
            if stopped:
                break
        epoch, start_batch = epoch + 1, 0
    bar.close()
    return FitResult(best_state, best_eval, history, step, round(step / per_epoch, 3),
                     round(elapsed(), 1), stopped)
