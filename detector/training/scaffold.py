"""The training scaffold both trainers share (region classifier and MultiBox).

One place for what every training run needs around its optimisation loop:

- :func:`setup`: this process's place in the job. Under ``torchrun`` (``WORLD_SIZE`` > 1)
  it joins the process group (gloo on the CPU, nccl on CUDA; rank ``r`` on
  ``cuda:LOCAL_RANK``); alone it is rank 0 of 1. The device is ``train.device``
  (:func:`detector.core.devices.resolve_device`) and the number format ``train.precision``
  (``fp32`` or ``bf16`` autocast, :func:`detector.core.devices.autocast_dtype`).
- :class:`TrainContext`: rank, world size, device and precision, with the collective
  operations the trainers use (barrier, mean all-reduce, broadcast), DDP wrapping and
  autocast.
- :func:`save_state` / :func:`load_state`: the resumable training state (weights, optimizer,
  counters), written atomically and read back with ``torch.load(weights_only=True)`` (a
  state file cannot run code).
- :class:`TrainLog`: the JSON-lines training log, appended by rank 0 only; on resume its
  tail after the resumed step is dropped, so the log reads like an uninterrupted run's.
- :func:`progress_bar`: the tqdm bar of a run (rank 0 only, kept when done).
- :func:`is_main_process`: for command lines, before or after :func:`setup` (reads ``RANK``).

Training functions receive a resolved config (``detector.resolve``); nothing here decides
defaults of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from detector.core.atomic import atomic_write_text
from detector.core.checkpoints import load_weights_only, save_weights_only
from detector.core.config import TrainConfig
from detector.core.devices import DeviceError, autocast_dtype, resolve_device, resolve_precision
from detector.core.distributed import World

TRAIN_PRECISIONS = ("fp32", "bf16")


def is_main_process() -> bool:
    """True for rank 0 of a torchrun job, and for a process started without torchrun."""
    return World.from_env().is_main


@dataclass(frozen=True)
class TrainContext:
    """This process's place in a training job (rank 0 of 1 without torchrun).

    Attributes:
        rank, world_size, local_rank: as torchrun numbers them.
        device: where this rank trains (``cuda:LOCAL_RANK`` on CUDA).
        precision: ``fp32`` or ``bf16`` (autocast of the forward pass).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of :attr:`precision` (None = fp32)."""
        return autocast_dtype(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the forward pass (disabled in fp32)."""
        dtype = self.autocast_dtype
        return torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        )

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills caches, writes files); the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the ranks (in place; ``value`` itself when alone)."""
        if self.distributed:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return value

    def broadcast(self, value: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``value`` on every rank (in place)."""
        if self.distributed:
            dist.broadcast(value, src)
        return value

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when distributed (on this rank's device)."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def setup(train: TrainConfig) -> TrainContext:
    """Join the torchrun job when ``WORLD_SIZE`` > 1; resolve ``train.device``/``precision``.

    Raises:
        DeviceError: a device or precision this machine cannot train with.
    """
    world = World.from_env()
    local_rank = world.local_rank
    device = resolve_device(train.device, local_rank)
    precision = train_precision(train.precision, device)
    if not world.distributed:
        return TrainContext(0, 1, 0, device, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return TrainContext(dist.get_rank(), dist.get_world_size(), local_rank, device, precision)


def train_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: fp32 or bf16 (``auto`` as the resolve step does)."""
    resolved = resolve_precision(precision, device)
    if resolved not in TRAIN_PRECISIONS:
        raise DeviceError(f"train.precision {precision!r}: training runs in fp32 or bf16")
    if resolved == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{device}: no bf16 on this GPU; set train.precision=fp32")
    return resolved


def leave_process_group() -> None:
    """End this process's part in the torchrun job (command lines call it when done)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (``model`` itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- state


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state (tensors and plain containers) atomically."""
    return save_weights_only(path, state)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training state written by :func:`save_state` (``weights_only``: it cannot run code).

    Raises:
        CheckpointError: missing or unreadable, naming the file.
    """
    return load_weights_only(path, map_location=map_location)


# ----------------------------------------------------------------------------- log


class TrainLog:
    """A JSON-lines training log: one object per line, appended by rank 0 only.

    Args:
        path: the log file (its folder must exist when the first line is written).
        enabled: False on the other ranks (every call is then a no-op).
    """

    def __init__(self, path: str | Path, *, enabled: bool) -> None:
        self.path, self.enabled = Path(path), enabled

    def write(self, **record: Any) -> None:
        """Append one line."""
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int, **match: Any) -> None:
        """Drop the lines past ``step`` (an interrupted run's tail), atomically.

        Only lines whose fields equal ``match`` (e.g. ``member=3``) are candidates; lines of
        other runs sharing the file are kept, and so are lines without a ``step``. A fresh run
        (``step`` 0) thus replaces its own earlier lines. Unreadable lines are dropped.
        """
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            ours = all(rec.get(k) == v for k, v in match.items())
            if not ours or rec.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in keep))

    def records(self) -> list[dict[str, Any]]:
        """Every readable line, in order ([] when there is no log)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def progress_bar(*, total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    """The progress bar of one run, in optimizer steps (rank 0; left on screen when done)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)
