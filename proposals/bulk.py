"""Proposals for many image files at once, into the cache: the work of ``proposals.precompute``.

Each image is decoded once, looked up in the cache and, when missing, proposed by the
generator: selective search in one of the pool's worker processes (so every core works),
MultiBox in the calling thread. ``2 x workers`` images are in flight at a time, so memory
stays bounded whatever the number of files; an image that cannot be read or searched is
counted with its one-line error and the rest go on. The cache makes a second pass over
the same files (a resumed job) cost only the decoding and hashing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from detector.core.io import ImageLoadError, load_image
from detector.core.messages import one_line
from detector.core.runtime import available_cores
from proposals.generator import ProposalGenerator


@dataclass
class BulkReport:
    """What a pass over a list of files found and did."""

    images: int = 0
    cached: int = 0  # every enabled source was already in the cache
    computed: int = 0
    failed: list[str] = field(default_factory=list)  # "<file>: <why>", one line each
    boxes: int = 0  # merged proposals, summed over the images that succeeded
    compute_seconds: float = 0.0  # wall time of the computing (the job's throughput)

    def merged(self, other: BulkReport) -> BulkReport:
        """Two shares' reports as one (the slower share's seconds: they ran side by side)."""
        return BulkReport(
            images=self.images + other.images,
            cached=self.cached + other.cached,
            computed=self.computed + other.computed,
            failed=self.failed + other.failed,
            boxes=self.boxes + other.boxes,
            compute_seconds=max(self.compute_seconds, other.compute_seconds),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        ok = self.images - len(self.failed)
        d["boxes_per_image"] = round(self.boxes / ok, 1) if ok else 0.0
        d["seconds_per_image"] = (
            round(self.compute_seconds / self.images, 4) if self.images else 0.0
        )
        return d


def precompute(
    generator: ProposalGenerator,
    paths: Sequence[str | os.PathLike],
    *,
    max_pixels: int,
    workers: int,
    on_image: Callable[[], None] = lambda: None,
) -> BulkReport:
    """Propose (and so cache) every file of ``paths``; ``on_image`` is called after each.

    Args:
        workers: selective-search processes, and images in flight / 2 (0 = all cores).
    """
    workers = workers or available_cores()
    report = BulkReport()
    started = time.perf_counter()
    pool = generator.process_pool(workers)
    with pool or contextlib.nullcontext(), ThreadPoolExecutor(workers) as threads:
        running: deque[Future] = deque()
        for path in paths:
            running.append(threads.submit(_one, generator, path, max_pixels, pool))
            if len(running) >= 2 * workers:
                _count(running.popleft().result(), report, on_image)
        while running:
            _count(running.popleft().result(), report, on_image)
    report.compute_seconds = round(time.perf_counter() - started, 3)
    return report


def _one(
    generator: ProposalGenerator, path: str | os.PathLike, max_pixels: int, pool: Any
) -> tuple[str, int | str]:
    """("cached" | "computed", proposals) or ("failed", "<file>: <why>") for one file."""
    try:
        image = load_image(path, max_pixels)
        hit = generator.cached(image)
        return ("cached" if hit else "computed"), len(generator(image, pool))
    except ImageLoadError as e:
        return "failed", one_line(e)
    except Exception as e:  # noqa: BLE001 - one bad image must not cost the others
        return "failed", f"{path}: {type(e).__name__}: {one_line(e)}"


def _count(result: tuple[str, int | str], report: BulkReport, on_image: Callable[[], None]):
    kind, value = result
    report.images += 1
    if kind == "failed":
        report.failed.append(str(value))
    else:
        setattr(report, kind, getattr(report, kind) + 1)
        report.boxes += int(value)
    on_image()
