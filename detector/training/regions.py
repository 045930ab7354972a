"""Training data for the region classifier: labelled regions of a split and warped mini-batches.

:func:`build_region_pool` labels the proposals of every image (R-CNN, see
``detector.training.sampling``); :class:`RegionBatches` turns a step number into one warped
mini-batch. A batch is a pure function of ``(seed, step)``: the regions, their order and
the flips come from ``numpy.random.default_rng([seed, step])``, so ``--resume`` and any
number of DataLoader workers or DDP ranks see exactly the batches of an uninterrupted run.
The records come from ``detector.datasets.open_split`` (any format the readers support).

Horizontal flip augmentation flips the warped crop. That equals warping the mirrored box
of the mirrored image (the warp samples a box symmetrically about its centre; only the
rounding of the context box to whole pixels can differ by one pixel at exact .5 edges),
and costs one ``torch.flip`` of the crop instead of a copy of the image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from detector.core.io import load_image
from detector.core.structures import ImageRecord, Proposals
from detector.training.sampling import (
    BACKGROUND_FROM,
    PoolBuilder,
    RegionPool,
    gives_background,
    image_regions,
    sample_minibatch,
)
from detector.warp import WarpSettings, warp_regions

IMAGE_CACHE_BYTES = 2 << 30  # decoded training images kept in memory (least recently used go)
# The region pool stays in memory up to this size, then spills to memory-mapped files:
# 200,000 images x ~1,000 proposals are ~200M regions, 22 bytes each (4.4 GB).
POOL_MEMORY_BYTES = 1 << 30


def build_region_pool(
    records: Sequence[ImageRecord],
    proposals: Iterable[Proposals | None],
    *,
    fg_iou: float,
    bg_iou: float,
    background_from: str,
    spill_dir: Path | None = None,
    max_bytes: int = POOL_MEMORY_BYTES,
) -> RegionPool:
    """Label every image's proposals and add its ground truths as positives.

    Args:
        records: the training images (ground truth in ``boxes``/``labels``).
        proposals: one per record, consumed one at a time (a generator keeps memory flat);
            None (an image that failed) contributes nothing.
        fg_iou, bg_iou: ``train.fg_iou`` / ``train.bg_iou`` (see :func:`image_regions`).
        background_from: ``train.background_from``: ``complete`` takes background only from
            exhaustively annotated records, ``all`` from every record.
        spill_dir, max_bytes: past ``max_bytes`` the pool goes to memory-mapped files in
            ``spill_dir`` (see :class:`PoolBuilder`); None keeps it in memory.
    Returns:
        the pool; ``image_idx`` indexes ``records``.
    """
    if background_from not in BACKGROUND_FROM:
        raise ValueError(
            f"train.background_from {background_from!r}: expected one of {', '.join(BACKGROUND_FROM)}"
        )
    builder = PoolBuilder(spill_dir, max_bytes)
    for rec, props in zip(records, proposals, strict=True):
        if props is None:
            builder.add(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
            continue
        background = gives_background(rec, background_from)
        builder.add(
            *image_regions(
                props.boxes,
                rec.boxes,
                rec.labels,
                fg_iou=fg_iou,
                bg_iou=bg_iou,
                background=background,
                ignore_boxes=rec.ignore_boxes,
            )
        )
    return builder.finish()


class ImageCache:
    """Decoded images kept in memory up to ``max_bytes`` (least recently used evicted).

    The demo set fits whole; on ILSVRC a batch touches ~128 random images, so the cache
    mostly saves the repeats within a run of steps.
    """

    def __init__(self, paths: Sequence[Path], max_pixels: int, max_bytes: int = IMAGE_CACHE_BYTES):
        self.paths = list(paths)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __getitem__(self, idx: int) -> np.ndarray:
        """uint8[H, W, 3] RGB of image ``idx``."""
        if idx in self._images:
            self._images.move_to_end(idx)
            return self._images[idx]
        image = load_image(self.paths[idx], max_pixels=self.max_pixels)
        self._images[idx] = image
        self._bytes += image.nbytes
        while self._bytes > self.max_bytes and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._bytes -= old.nbytes
        return image


class RegionBatches(torch.utils.data.Dataset):
    """``batches[step]`` -> this rank's share of global mini-batch ``step``.

    Returns ``(crops float32[B, 3, S, S] channels_last, labels int64[B])``; rank ``r`` of
    ``world_size`` gets positions ``r, r + world_size, ...`` of the global batch, so the
    ranks together see the same ``batch_size`` regions a single process would. ``images`` may
    be None for :meth:`plan` alone.
    """

    def __init__(
        self,
        pool: RegionPool,
        images: ImageCache | None,
        *,
        seed: int,
        batch_size: int,
        fg_fraction: float,
        flip: bool,
        warp: WarpSettings,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.pool, self.images, self.seed = pool, images, seed
        self.batch_size, self.fg_fraction, self.flip = batch_size, fg_fraction, flip
        self.warp = warp
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return 2**62  # indexed by step; the loop decides how many

    def plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global batch of ``step``: pool indices (int64[B]) and flip flags (bool[B])."""
        rng = np.random.default_rng([self.seed, step])
        idx = sample_minibatch(
            rng, self.pool, batch_size=self.batch_size, fg_fraction=self.fg_fraction
        )
        flips = rng.random(len(idx)) < 0.5 if self.flip else np.zeros(len(idx), bool)
        return idx, flips

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx, flips = self.plan(step)
        idx, flips = idx[self.rank :: self.world_size], flips[self.rank :: self.world_size]
        crops = self.crops(idx)
        if flips.any():
            sel = torch.from_numpy(np.flatnonzero(flips))
            crops[sel] = crops[sel].flip(3)
        labels = torch.from_numpy(self.pool.labels[idx].astype(np.int64))
        return crops.contiguous(memory_format=torch.channels_last), labels

    def crops(self, idx: np.ndarray) -> torch.Tensor:
        """Warp regions ``idx`` of the pool, one warp call per image, in ``idx`` order."""
        size = self.warp.size
        out = torch.zeros((len(idx), 3, size, size), dtype=torch.float32)
        image_of = self.pool.image_idx[idx]
        for image_idx in np.unique(image_of):
            rows = np.flatnonzero(image_of == image_idx)
            out[torch.from_numpy(rows)] = warp_regions(
                self.images[int(image_idx)],
                self.pool.boxes[idx[rows]],
                self.warp,
                device="cpu",
            ).float()
        return out
