"""Selective search over many images in worker processes, one OpenCV thread each.

The OpenCV binding releases the GIL but the algorithm is single-threaded, so throughput
comes from processes. Workers are started with ``spawn`` (never ``fork``: forking a process
that has imported torch or started OpenCV threads can deadlock). Each worker watches its
parent and exits when the parent is gone (killed with SIGKILL, say), so no worker outlives
the process that started it. Items are numpy images or
image paths (decoded in the worker, so only a path crosses the process boundary). An image
that fails yields a :class:`ProposalError` in its place; the pool carries on.

Example::

    from proposals.pool import SelectiveSearchPool
    from proposals.selective_search import RCNN_FAST

    with SelectiveSearchPool(workers=0, **RCNN_FAST) as pool:   # 0 = all cores
        for path, boxes in zip(paths, pool.map(paths), strict=True):
            if isinstance(boxes, Exception):
                print(boxes)        # "<path>: no such file (ImageLoadError)"
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.core.io import DEFAULT_MAX_PIXELS, load_image
from detector.core.runtime import available_cores
from proposals.selective_search import selective_search, settings_from_config

if TYPE_CHECKING:
    from detector.core.config import Config

Item = np.ndarray | str | Path
Result = np.ndarray | Exception

PARENT_POLL_SECONDS = 0.5  # how often a worker checks that its parent is still alive


class ProposalError(RuntimeError):
    """Selective search failed on one item; the message names the item and the cause."""


class SelectiveSearchPool:
    """A process pool running :func:`selective_search` with fixed settings.

    Args:
        workers: number of processes; 0 = all available cores.
        max_pixels: images (given as paths) above this many pixels are refused.
        **settings: keyword arguments of :func:`selective_search` (checked here).

    Use as a context manager; ``map`` and ``imap_unordered`` keep at most
    ``2 * workers`` items in flight, so long iterables of images do not pile up in memory.
    A worker that dies (segfault, OOM kill) raises ``BrokenProcessPool`` from the iterator:
    loud, rather than the hang of ``multiprocessing.Pool``.
    """

    def __init__(self, workers: int = 0, *, max_pixels: int = DEFAULT_MAX_PIXELS, **settings: Any):
        _check_settings(settings)
        if workers < 0:
            raise ValueError(f"SelectiveSearchPool: workers must be >= 0, got {workers}")
        self.workers = workers or available_cores()
        self.max_pixels = max_pixels
        self.settings = settings
        self._executor: ProcessPoolExecutor | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> SelectiveSearchPool:
        """Pool size and settings from ``proposals.selective_search``, pixel bound from ``data``."""
        ss = cfg.proposals.selective_search
        return cls(ss.workers, max_pixels=cfg.data.max_pixels, **settings_from_config(ss))

    def __enter__(self) -> SelectiveSearchPool:
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, items: Iterable[Item]) -> Iterator[Result]:
        """Boxes (float32[N, 4]) or a :class:`ProposalError` per item, in input order."""
        pending: deque[Future] = deque()
        for item in items:
            pending.append(self._submit(item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def run(self, item: Item) -> np.ndarray:
        """Boxes (float32[N, 4]) of one item, computed in a worker process. Blocks; safe to
        call from several threads at once (that is how :meth:`Detector.detect_many` feeds it).

        Raises:
            ProposalError: selective search failed on the item.
        """
        result = self._submit(item).result()
        if isinstance(result, Exception):
            raise result
        return result

    def imap_unordered(self, items: Iterable[Item]) -> Iterator[tuple[int, Result]]:
        """``(index, boxes or ProposalError)`` pairs as they finish; index is the item's position."""
        running: dict[Future, int] = {}
        for index, item in enumerate(items):
            running[self._submit(item)] = index
            if len(running) >= 2 * self.workers:
                yield from _drain_one(running)
        while running:
            yield from _drain_one(running)

    def _submit(self, item: Item) -> Future:
        if self._executor is None:
            raise RuntimeError("SelectiveSearchPool: use it inside a `with` block")
        if isinstance(item, Path):
            item = str(item)  # plain str pickles small and the same on every platform
        return self._executor.submit(_run_one, item, self.max_pixels, self.settings)


def _drain_one(running: dict[Future, int]) -> Iterator[tuple[int, Result]]:
    """Wait for at least one future; yield (and forget) every finished one."""
    done, _ = wait(running, return_when=FIRST_COMPLETED)
    for future in done:
        yield running.pop(future), future.result()


def _check_settings(settings: dict[str, Any]) -> None:
    """Unknown keyword arguments fail here, in the parent, not once per image in the workers."""
    accepted = set(inspect.signature(selective_search).parameters) - {"image"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise TypeError(
            f"SelectiveSearchPool: unknown selective_search setting(s) {', '.join(unknown)}"
        )


def _init_worker(parent: int) -> None:
    """One thread per worker: the pool provides the parallelism. A watchdog thread ends the
    worker when ``parent`` (the pool's process) is gone."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # only if the spawned main module imported it
        sys.modules["torch"].set_num_threads(1)


def _exit_with_parent(parent: int) -> None:
    """Poll the parent process id; once it differs from ``parent`` the parent has died (the
    worker was re-parented) and the worker exits at once, whatever it is doing.

    A polling thread rather than Linux's ``PR_SET_PDEATHSIG``: that signal follows the
    *thread* that started the worker, and pool workers may be started from any thread.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _run_one(item: np.ndarray | str, max_pixels: int, settings: dict[str, Any]) -> Result:
    """Worker body: never raises, so one bad image cannot break the pool."""
    name = item if isinstance(item, str) else f"<image {getattr(item, 'shape', '?')}>"
    try:
        image = load_image(item, max_pixels) if isinstance(item, str) else item
        return selective_search(image, **settings)
    except Exception as e:  # noqa: BLE001 - every failure becomes this item's result
        # Rebuilt as a one-string exception: the original may not pickle back to the parent.
        message = str(e) if str(e).startswith(name) else f"{name}: {e}"
        return ProposalError(f"{message} ({type(e).__name__})")
