"""Data-parallel training under `torchrun`: the process group, this rank's part of a global
batch, and the few collectives the training loop needs (all no-ops in a single process)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Cluster", "Part", "init_cluster", "shutdown_cluster", "wrap_ddp"]

T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """Which share of each global batch this process computes: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1

    def strided(self, items: list[T]) -> list[T]:
        """Every world_size-th item from rank on: the rows of a length-sorted batch are dealt
        out like cards, so each rank gets short and long texts alike (no rank waits long)."""
        return items[self.rank::self.world_size]

    def span(self, n: int) -> slice:
        """This rank's contiguous slice of n rows (sizes differ by at most one)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)


@dataclass(frozen=True)
class Cluster:
    """The distributed set-up of this process; world_size 1 and no backend without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def part(self) -> Part:
        """This rank's share of a global batch."""
        return Part(self.rank, self.world_size)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and the progress bar."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        """The set-up as recorded in a model's training provenance."""
        return {"world_size": self.world_size, "backend": self.backend or None}


def init_cluster(device: str) -> tuple[Cluster, str]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT): gloo for the CPU, nccl for GPUs, each GPU rank on the
    device of its local rank. Returns the cluster and the device this rank trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device.startswith("cuda")
    if on_gpu:
        if device not in ("cuda", f"cuda:{local_rank}"):
            raise ValueError(f"--device {device} under torchrun: give --device cuda; each "
                             f"rank takes the GPU of its local rank (this one cuda:{local_rank})")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    backend = "nccl" if on_gpu else "gloo"
    # A rank that waits longer than this for the others (one of them died) fails instead of
    # hanging; evaluations on rank 0 happen while the others wait, so the bound is generous.
    dist.init_process_group(backend, timeout=timedelta(minutes=30),
                            device_id=torch.device(device) if on_gpu else None)
    return Cluster(rank, world, local_rank, backend), device


def shutdown_cluster(together: bool = True) -> None:
    """Leave the process group (if this process joined one). With `together`, first wait
    for every rank to get here (rank 0 exports while the others are done), so that no rank
    tears its side of the group down while a peer still uses it: a rank that left early
    could abort (SIGABRT) at exit and fail the whole run after the work was done."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def current() -> Cluster:
    """The cluster `init_cluster` set up, read back from torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return Cluster()
    return Cluster(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def _sum_hook(_: Any, bucket: Any) -> torch.futures.Future[Tensor]:
    """All-reduce a gradient bucket as a sum (DDP's default divides by the world size): each
    rank's loss is already its share of the global batch's mean, so the sum is that mean's
    gradient, whatever the shares' sizes."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    assert work is not None
    summed: torch.futures.Future[Tensor] = work.get_future().then(lambda fut: fut.value()[0])
    return summed


# DDP checks a hook's annotations against the classes themselves; this module's are strings.
_sum_hook.__annotations__ = {"bucket": getattr(dist, "GradBucket"),  # noqa: B009 (untyped)
                             "return": torch.futures.Future[Tensor]}


def wrap_ddp(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """`module` under DistributedDataParallel with summed gradients."""
    ddp = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                  find_unused_parameters=find_unused)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (picklable values)."""
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def gather(value: T) -> list[T] | None:
    """Every rank's `value` in rank order on rank 0; None on the others."""
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]
