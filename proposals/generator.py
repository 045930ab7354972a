"""Proposals of an image: cached selective search + MultiBox, merged.

``ProposalGenerator`` is the ``propose`` step of the detector. Selective search (~0.6 s an
image) is cached on disk by image content and settings; so is MultiBox (one forward pass),
keyed by its checkpoint's SHA-256 and settings, when it was loaded from a checkpoint
(``python -m proposals.precompute`` fills the cache for a whole split). Either source may
be disabled.

Example::

    from detector import load_config, resolve_config
    from proposals.generator import ProposalGenerator

    generator = ProposalGenerator.from_config(resolve_config(load_config("demo")))
    proposals = generator(image)                       # Proposals, both sources
    many = generator.propose_many(images, workers=2)   # selective search in a process pool
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from detector.core.config import Config, ConfigError
from detector.core.devices import resolve_device
from detector.core.io import ImageLoadError, load_image
from detector.core.paths import cache_root, expand
from detector.core.structures import Proposals, ProposalSource
from proposals.cache import ProposalCache, cache_key
from proposals.merge import merge_proposals
from proposals.multibox.model import MultiBox
from proposals.pool import SelectiveSearchPool
from proposals.selective_search import selective_search, settings_from_config

FILES_CHUNK = 256  # images decoded at a time by propose_files (bounds memory)


class ProposalGenerator:
    """Selective search (cached) + MultiBox, merged.

    Args:
        selective_search_settings: keyword arguments of ``selective_search`` (None = the
            source is off).
        multibox: a loaded MultiBox model (None = the source is off).
        cache: where selective-search boxes are kept (None = no cache).
        workers: processes computing selective search in :meth:`propose_many` and
            :meth:`process_pool` (0 = all cores).
    """

    def __init__(
        self,
        selective_search_settings: dict[str, Any] | None,
        multibox: MultiBox | None,
        *,
        cache: ProposalCache | None,
        workers: int,
    ) -> None:
        self.ss_settings = (
            None if selective_search_settings is None else dict(selective_search_settings)
        )
        self.multibox = multibox
        self.cache = cache
        self.workers = workers

    @classmethod
    def from_config(cls, cfg: Config, device: str | None = None) -> ProposalGenerator:
        """Build from ``cfg.proposals``; an enabled MultiBox without a checkpoint is a ConfigError.

        ``device`` (MultiBox's) defaults to ``cfg.inference.device``.
        """
        device = str(resolve_device(device or cfg.inference.device))
        ss_cfg = cfg.proposals.selective_search
        settings = None
        if ss_cfg.enabled:
            settings = settings_from_config(ss_cfg)
        return cls(
            settings,
            _multibox_from_config(cfg, device),
            cache=_cache_from_config(ss_cfg.cache_dir),
            workers=ss_cfg.workers,
        )

    def __call__(self, image: np.ndarray, pool: SelectiveSearchPool | None = None) -> Proposals:
        """image (uint8[H, W, 3]) -> merged Proposals (see ``proposals.merge``).

        Args:
            pool: an open :meth:`process_pool`; uncached selective search then runs in one of
                its worker processes (this call waits for it) instead of in this thread.
        """
        ss = self._selective_search(image, pool)
        mb = self.multibox_many([image])[0]
        return _clipped(merge_proposals(ss, mb), image)

    def propose_many(
        self, images: Sequence[np.ndarray], workers: int | None = None
    ) -> list[Proposals]:
        """Proposals of several images. Uncached selective search runs in a process pool
        while MultiBox runs here, in the main process.

        Raises:
            proposals.pool.ProposalError: selective search failed on an image.
        """
        images = list(images)
        with ThreadPoolExecutor(max_workers=1) as thread:
            ss_future = thread.submit(
                self._selective_search_many, images, self.workers if workers is None else workers
            )
            mb = self.multibox_many(images)
            ss = ss_future.result()
        return [
            _clipped(merge_proposals(s, m), im) for s, m, im in zip(ss, mb, images, strict=True)
        ]

    def propose_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        max_pixels: int,
        workers: int | None = None,
        chunk: int = FILES_CHUNK,
    ) -> Iterator[Proposals | ImageLoadError]:
        """Proposals of image files, in order, :meth:`propose_many` on ``chunk`` decoded images
        at a time (memory stays bounded); an unreadable file yields its ``ImageLoadError``."""
        for first in range(0, len(paths), chunk):
            results: list[Proposals | ImageLoadError] = []
            images = []
            for path in paths[first : first + chunk]:
                try:
                    images.append(load_image(path, max_pixels))
                    results.append(None)
                except ImageLoadError as e:  # one bad image must not cost the others
                    results.append(e)
            proposals = iter(self.propose_many(images, workers=workers))
            yield from (r if r is not None else next(proposals) for r in results)

    def process_pool(self, workers: int | None = None) -> SelectiveSearchPool | None:
        """A (not yet entered) pool of selective-search worker processes with this
        generator's settings, for :meth:`__call__`; None when selective search is off.

        Args:
            workers: processes; None = the generator's ``workers``; 0 = all cores.
        """
        if self.ss_settings is None:
            return None
        return SelectiveSearchPool(self.workers if workers is None else workers, **self.ss_settings)

    def cached(self, image: np.ndarray) -> bool:
        """Whether every enabled source of ``image`` is already in the cache."""
        if self.cache is None:
            return False
        keys = [self._key(image)] if self.ss_settings is not None else []
        if self.multibox is not None:
            identity = self.multibox.identity
            keys.append(cache_key(image, identity) if identity else None)
        return all(k is not None and self.cache.path(k).is_file() for k in keys)

    def multibox_many(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        """MultiBox's proposals of each image (empty when it is off), from the cache where
        there, the rest in batched forward passes (then cached)."""
        if self.multibox is None:
            return [Proposals() for _ in images]
        identity = self.multibox.identity if self.cache is not None else None
        keys = [cache_key(im, identity) if identity else None for im in images]
        out = [
            self.cache.get(k, _size(im)) if k else None for k, im in zip(keys, images, strict=True)
        ]
        todo = [i for i, p in enumerate(out) if p is None]
        computed = self.multibox.propose_batch([images[i] for i in todo]) if todo else []
        for i, proposals in zip(todo, computed, strict=True):
            out[i] = proposals
            if keys[i]:
                self.cache.put(keys[i], proposals)
        return out

    def _selective_search(
        self, image: np.ndarray, pool: SelectiveSearchPool | None = None
    ) -> np.ndarray:
        """float32[N, 4] boxes of one image, from the cache when there, else computed here
        or, given an open pool, in a worker process."""
        if self.ss_settings is None:
            return np.zeros((0, 4), np.float32)
        key = self._key(image)
        cached = self.cache.get(key, _size(image)) if key else None
        if cached is not None:
            return cached.boxes
        boxes = None
        if pool is not None:
            try:
                boxes = pool.run(image)
            except BrokenProcessPool as e:
                warnings.warn(
                    f"selective-search worker processes stopped ({e}); searching in this "
                    "process instead. A script that starts them needs an "
                    "`if __name__ == '__main__':` guard.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if boxes is None:
            boxes = selective_search(image, **self.ss_settings)
        if key:
            self.cache.put(key, _as_ss_proposals(boxes))
        return boxes

    def _selective_search_many(self, images: list[np.ndarray], workers: int) -> list[np.ndarray]:
        if self.ss_settings is None:
            return [np.zeros((0, 4), np.float32) for _ in images]
        keys = [self._key(im) for im in images]
        found = [
            self.cache.get(k, _size(im)) if k else None for k, im in zip(keys, images, strict=True)
        ]
        out = [None if p is None else p.boxes for p in found]
        todo = [i for i, b in enumerate(out) if b is None]
        if todo:
            with SelectiveSearchPool(workers, **self.ss_settings) as pool:
                for i, boxes in zip(todo, pool.map(images[i] for i in todo), strict=True):
                    if isinstance(boxes, Exception):
                        raise boxes
                    out[i] = boxes
                    if keys[i]:
                        self.cache.put(keys[i], _as_ss_proposals(boxes))
        return out

    def _key(self, image: np.ndarray) -> str | None:
        return cache_key(image, self.ss_settings) if self.cache is not None else None


def _clipped(proposals: Proposals, image: np.ndarray) -> Proposals:
    """Boxes clipped to the image (both sources already are; this holds whatever a source
    returns, so the warp never sees a box larger than the image)."""
    w, h = _size(image)
    np.clip(proposals.boxes, 0, np.array([w, h, w, h], np.float32), out=proposals.boxes)
    return proposals


def _size(image: np.ndarray) -> tuple[int, int]:
    """(width, height) of an HxW[xC] image."""
    return int(image.shape[1]), int(image.shape[0])


def _as_ss_proposals(boxes: np.ndarray) -> Proposals:
    n = len(boxes)
    return Proposals(
        boxes,
        np.full(n, np.nan, np.float32),
        np.full(n, int(ProposalSource.SELECTIVE_SEARCH), np.uint8),
    )


def _multibox_from_config(cfg: Config, device: str) -> MultiBox | None:
    mb = cfg.proposals.multibox
    if not mb.enabled:
        return None
    if not mb.checkpoint:
        raise ConfigError(
            "proposals.multibox.enabled is true but proposals.multibox.checkpoint is empty: "
            "train one with `python -m proposals.multibox train` or set proposals.multibox.enabled=false"
        )
    return MultiBox.from_checkpoint(
        mb.checkpoint,
        device,
        top_k=mb.top_k,
        nms_iou=mb.nms_iou,
        num_priors=mb.num_priors,
        input_size=mb.input_size,
    )


def _cache_from_config(cache_dir: str) -> ProposalCache | None:
    if cache_dir.lower() == "none":
        return None
    return ProposalCache(expand(cache_dir) if cache_dir else cache_root() / "proposals")
