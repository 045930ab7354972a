"""Detection on many images: serial, or pipelined (the next images proposed while one is scored).

Pipelined, threads load each image, look up its cached selective-search boxes and run
MultiBox (torch releases the GIL); uncached selective search, single-threaded C++, runs in a
pool of spawned worker processes. At most ``workers + 1`` images are ahead.

Pipelining pays only when scoring leaves cores free (a GPU, or fewer torch threads than
cores). When CPU scoring already uses every core, work beside it stalls the whole OpenMP
team: on 2 cores it measured 1-3 s per image slower than one image after another, so
``pipeline=None`` then detects serially (docs/DECISIONS.md, "Speed paths").
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from detector.core.clock import Clock
from detector.core.io import ImageLike
from detector.core.runtime import available_cores
from detector.core.structures import Detections, Proposals

Result = tuple[ImageLike, Detections | Exception]


class Detector(Protocol):
    """What this module uses of a ``detector.detector.Detector`` (which imports this module)."""

    proposer: Any
    scorer: Any
    calibration_images: int

    def load(self, x: ImageLike) -> np.ndarray: ...

    def detect(self, x: ImageLike) -> Detections: ...

    def classify(self, image: np.ndarray, proposals: Proposals, clock: Clock) -> Detections: ...

    def calibrate(self, images: list[ImageLike]) -> int: ...


def detect_many(
    detector: Detector,
    items: Iterable[ImageLike],
    workers: int = 0,
    *,
    processes: bool = True,
    pipeline: bool | None = None,
) -> Iterator[Result]:
    """Detect on many images; yields ``(item, Detections)`` or ``(item, Exception)`` in input
    order. Pipelined, ``timings`` holds the workers' ``load`` and ``propose`` seconds and
    ``wait``, the time scoring waited for them. An uncalibrated int8 scorer is first
    calibrated on the first ``detector.calibration_images`` items.

    Args:
        workers: images proposed at once; 0 = all available cores.
        processes: False keeps selective search in the threads (no process is started).
        pipeline: True or False forces the choice; None decides (see the module docstring).
    """
    if detector.scorer.needs_calibration and detector.calibration_images > 0:
        todo = iter(items)
        head = list(itertools.islice(todo, detector.calibration_images))
        detector.calibrate(head)
        items = itertools.chain(head, todo)
    if not (scoring_leaves_cores_free(detector) if pipeline is None else pipeline):
        yield from _serial(detector, items)
        return
    threads = workers if workers > 0 else available_cores()
    make_pool = getattr(detector.proposer, "process_pool", None) if processes else None
    ss_pool = make_pool(threads) if make_pool is not None else None
    with ss_pool if ss_pool is not None else contextlib.nullcontext():
        yield from _pipeline(detector, items, threads, ss_pool)


def scoring_leaves_cores_free(detector: Detector) -> bool:
    """True when the members run on a GPU, or on fewer torch threads than there are cores."""
    device = getattr(detector.scorer, "device", None)
    if device is not None and torch.device(device).type != "cpu":
        return True
    return torch.get_num_threads() < available_cores()


def _serial(detector: Detector, items: Iterable[ImageLike]) -> Iterator[Result]:
    for item in items:
        try:
            result: Detections | Exception = detector.detect(item)
        except Exception as e:  # noqa: BLE001 - the image's result, reported by the caller
            result = e
        yield item, result


def _pipeline(
    detector: Detector, items: Iterable[ImageLike], threads: int, ss_pool: Any
) -> Iterator[Result]:
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="propose")
    window: deque[tuple[ImageLike, Future]] = deque()
    todo = iter(items)
    try:
        for item in itertools.islice(todo, threads + 1):
            window.append((item, pool.submit(_prepare, detector, item, ss_pool)))
        while window:
            item, future = window.popleft()
            for nxt in itertools.islice(todo, 1):
                window.append((nxt, pool.submit(_prepare, detector, nxt, ss_pool)))
            yield item, _finish(detector, future)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare(
    detector: Detector, x: ImageLike, ss_pool: Any = None
) -> tuple[np.ndarray, Proposals, Clock] | Exception:
    """Worker body: load and propose; never raises."""
    try:
        clock = Clock()
        image = detector.load(x)
        clock.lap("load")
        if ss_pool is None:
            proposals = detector.proposer(image)
        else:
            proposals = detector.proposer(image, pool=ss_pool)
        clock.lap("propose")
        return image, proposals, clock
    except Exception as e:  # noqa: BLE001 - the image's result, reported by the caller
        return e


def _finish(detector: Detector, future: Future) -> Detections | Exception:
    clock = Clock()
    prepared = future.result()
    waited = clock.lap("wait")
    if isinstance(prepared, Exception):
        return prepared
    image, proposals, worker_clock = prepared
    clock.laps = {**worker_clock.laps, "wait": waited}
    try:
        return detector.classify(image, proposals, clock)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge image
        return e
