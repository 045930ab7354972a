"""A job's share of the work: torchrun ranks, ``--shard I/N`` job-array tasks, and the one
process group that coordinates them.

Work is split the same way everywhere (``detector.run``, ``eval.map``,
``proposals.precompute``): the items are ordered, and share ``I`` of ``N`` takes items
``I, I + N, I + 2N, ...`` of the *whole* list (:meth:`Shard.take`). The split depends only
on the list and ``N``, never on what is already done, so a relaunched array task or a
resume with another world size gets a share that no other live share overlaps; each share
then skips what is done. Striding (not blocks) keeps the shares balanced when the list is
sorted by folder and the folders differ in image size.

Example::

    world = World.from_env()              # torchrun's RANK, WORLD_SIZE, LOCAL_*; 0 of 1 alone
    with Group.join(world) as group:      # gloo; a no-op for one process
        mine = world.shard.take(items)
        statuses = group.gather(status)   # every rank's, on every rank
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# A detection rank may wait this long at the final barrier for the slowest rank (gloo's
# default, 30 minutes, is shorter than one rank's share of a test set).
GROUP_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` (0-based I), as ``--shard`` takes it."""
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4 (I from 0 to N-1)")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def whole(self) -> bool:
        return self.count == 1

    def take(self, items: Sequence[T]) -> list[T]:
        """Items ``index, index + count, ...`` of ``items``."""
        return list(items[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        """From torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``); a ``WORLD_SIZE`` of 1 or none is one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            size=size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    def device(self, device: str) -> str:
        """This rank's device for a resolved ``device``: its local GPU for any CUDA device
        (ranks of one machine never share one GPU by accident), the CPU unchanged."""
        return f"cuda:{self.local_rank}" if device.startswith("cuda") else device

    def cores(self, available: int) -> int:
        """This rank's share of the machine's ``available`` cores (at least 1): the ranks
        of one machine split its cores instead of each starting a team on all of them."""
        return max(1, available // self.local_size)


class Group:
    """The ranks of a torchrun job, for the few object collectives the commands need.

    gloo even beside GPUs: only small Python objects (paths, statuses) are exchanged,
    and gloo needs no device. For one process every method is local.
    """

    def __init__(self, world: World) -> None:
        self.world = world

    @classmethod
    @contextlib.contextmanager
    def join(cls, world: World) -> Iterator[Group]:
        """Join the job's process group (torchrun's ``env://`` rendezvous); leave it after."""
        import torch.distributed as dist

        joined = False
        if world.distributed and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
            joined = True
        try:
            yield cls(world)
        finally:
            if joined:
                dist.destroy_process_group()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable)."""
        if not self.world.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank; doubles as a barrier."""
        if not self.world.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world.size
        dist.all_gather_object(out, value)
        return out
