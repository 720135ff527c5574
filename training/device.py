"""Training on an accelerator: mixed precision (autocast, a GradScaler for fp16) and batches
moved to the device through pinned memory without blocking the host."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "PrecisionUnsupported", "autocast", "check_precision", "grad_scaler",
           "to_device"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionUnsupported(ValueError):
    """The device cannot train in the precision asked for."""


_LAYERS: dict[str, type[nn.LSTM | nn.GRU | nn.RNN]] = {"LSTM": nn.LSTM, "GRU": nn.GRU,
                                                       "RNN": nn.RNN}


@functools.cache
def _cpu_bf16_runs(name: str) -> bool:
    """Whether this CPU runs a recurrent layer `name` (LSTM, GRU, RNN) forward and
    backward under bfloat16 autocast: oneDNN's bfloat16 LSTM needs CPU features that not
    every x86 CPU has, and fails deep inside the first step without them."""
    with torch.random.fork_rng(devices=[]):
        layer = _LAYERS[name](4, 4, batch_first=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = layer(torch.ones(2, 3, 4))
            out.float().sum().backward()
        except RuntimeError:
            return False
    return True


def check_precision(precision: str, device: torch.device | str, net: nn.Module | None = None) -> None:
    """Refuse a precision this device (with the recurrent layers of `net`) cannot train in,
    naming the way out."""
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise PrecisionUnsupported(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and kind != "cuda":
        raise PrecisionUnsupported(f"--precision fp16 needs a GPU (device is {device}); on the "
                                   "CPU use fp32, or bf16 where the CPU has bfloat16 kernels")
    if precision == "bf16" and kind == "cpu" and net is not None:
        for name in sorted({type(m).__name__ for m in net.modules()} & set(_LAYERS)):
            if not _cpu_bf16_runs(name):
                raise PrecisionUnsupported(f"--precision bf16: this CPU has no bfloat16 {name} "
                                           "kernel; use fp32 here, or bf16 on a GPU")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The forward pass in `precision`: fp32 enters no context at all, so its numbers are
    those of plain training; bf16/fp16 autocast matmuls (and, on CUDA, cuDNN's LSTM/GRU/RNN
    kernels) while losses and softmaxes stay float32 and the weights float32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its small range would flush small gradients to zero); None
    for fp32 and bf16, whose range is float32's."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; to a GPU through pinned memory and without blocking, so the copy
    overlaps the host's work on the next batch instead of stalling it."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
