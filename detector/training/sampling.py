"""R-CNN region sampling for classifier fine-tuning.

Every proposal of a training image is labelled by its best overlap with the image's ground
truth (R-CNN): IoU >= ``fg_iou`` with a ground truth -> that ground truth's class, max IoU
< ``bg_iou`` -> background (0), anything in between -> ignored (-1; never sampled). The
ground-truth boxes themselves join the pool as positives. Background is taken only where the
annotation is complete: an image boxed for some classes only (a 2013 ILSVRC train image,
:attr:`ImageRecord.exhaustive` False) gives its positives but no background, unless
``train.background_from`` is ``all`` (R-CNN's fine-tuning windows). Background candidates
lying mostly inside an ignored region (a COCO crowd box: intersection over the proposal's
area >= :data:`CROWD_IOA`) are dropped too. A mini-batch of ``batch_size``
regions (the paper's 128) holds ``round(batch_size * fg_fraction)`` positives (32) and
background regions (96) drawn at random from the pool of ALL training images (Caffe's
window data layer), so one batch mixes many images. The settings are ``train.fg_iou``,
``train.bg_iou``, ``train.batch_size`` and ``train.fg_fraction``; the functions take them
as required keyword arguments.

IoU is the plain IoU of internal xyxy boxes, which equals the devkit's "+1" IoU of the same
boxes in the inclusive frame (see ``detector.core.structures``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.core.boxes import box_iou
from detector.core.structures import ImageRecord

IGNORE = -1  # label of a region with bg_iou <= max IoU < fg_iou: neither positive nor background
CROWD_IOA = 0.5  # a background candidate this much inside a crowd box is no background (COCO)
BACKGROUND_FROM = ("complete", "all")  # the values of train.background_from


def gives_background(record: ImageRecord, background_from: str) -> bool:
    """Background may be taken from ``record`` (``train.background_from``): it is boxed for
    every class, or the setting is ``all``. The one rule for both trainers (MultiBox's
    unmatched slots count as negatives exactly where this holds)."""
    return background_from == "all" or record.exhaustive


def teaches(record: ImageRecord, background_from: str) -> bool:
    """``record`` gives training signal: ground truth, or background it may give."""
    return len(record.labels) > 0 or gives_background(record, background_from)


def label_proposals(
    proposals: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    *,
    fg_iou: float,
    bg_iou: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Label proposals by their best-overlapping ground truth.

    Args:
        proposals (float32[P, 4]): internal xyxy.
        gt_boxes (float32[G, 4]), gt_labels (int64[G]): class ids 1..K.
        fg_iou: a proposal with IoU >= fg_iou (inclusive) takes the class of its best ground truth.
        bg_iou: a proposal with max IoU < bg_iou is background (0); in between -> IGNORE (-1).
    Returns:
        labels (int64[P]), max_iou (float32[P]); with no ground truth all labels are 0.
    """
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    if len(gt_labels) == 0 or len(proposals) == 0:
        return np.zeros(len(proposals), np.int64), np.zeros(len(proposals), np.float32)
    iou = box_iou(proposals, gt_boxes).astype(np.float32)  # (P, G)
    best = iou.argmax(axis=1)  # first ground truth on ties (XML order)
    max_iou = iou[np.arange(len(proposals)), best]
    labels = np.full(len(proposals), IGNORE, np.int64)
    labels[max_iou < bg_iou] = 0
    fg = max_iou >= fg_iou
    labels[fg] = gt_labels[best[fg]]
    return labels, max_iou


def image_regions(
    proposals: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    *,
    fg_iou: float,
    bg_iou: float,
    background: bool,
    ignore_boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The training regions of one image: its ground truths (positives) then its labelled proposals.

    Ignored proposals (between bg_iou and fg_iou) are dropped; so are all background
    proposals when ``background`` is False (the image is not boxed for every class) and
    those mostly inside one of ``ignore_boxes`` (crowd regions).
    Returns:
        boxes (float32[G + P', 4]), labels (int64[G + P']).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    labels, _ = label_proposals(proposals, gt_boxes, gt_labels, fg_iou=fg_iou, bg_iou=bg_iou)
    keep = labels != IGNORE
    if not background:
        keep &= labels != 0
    elif ignore_boxes is not None and len(ignore_boxes) and keep.any():
        keep &= ~((labels == 0) & (max_ioa(proposals, ignore_boxes) >= CROWD_IOA))
    return (
        np.concatenate([gt_boxes, proposals[keep]]),
        np.concatenate([gt_labels, labels[keep]]),
    )


def max_ioa(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """float32[N]: the largest share of each box's area inside one of ``regions``."""
    regions = np.asarray(regions, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1)
    return (inter / np.maximum(area, 1e-6)[:, None]).max(axis=1).astype(np.float32)


@dataclass
class RegionPool:
    """All training regions of a split, as compact arrays (one row per region, 22 bytes).

    Attributes:
        image_idx (int32[R]): position of the region's image in the training list.
        boxes (float32[R, 4]): internal xyxy in that image's pixels.
        labels (int16[R]): 0 background, 1..K class id.

    The arrays may be memory-mapped files (:class:`PoolBuilder` spills them to disk past its
    memory budget); the positive and background indices are computed once, on first use.
    """

    image_idx: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int16))

    def __post_init__(self) -> None:
        self.image_idx = _as(self.image_idx, np.int32).reshape(-1)
        self.boxes = _as(self.boxes, np.float32).reshape(-1, 4)
        self.labels = _as(self.labels, np.int16).reshape(-1)
        if not len(self.image_idx) == len(self.boxes) == len(self.labels):
            raise ValueError("RegionPool: image_idx, boxes and labels differ in length")
        self._fg: np.ndarray | None = None
        self._bg: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_positives(self) -> int:
        return len(self.positives)

    @property
    def positives(self) -> np.ndarray:
        """Indices of the positive regions (int32 below 2**31 regions), ascending."""
        if self._fg is None:
            self._fg = _index(self.labels, positive=True)
        return self._fg

    @property
    def background(self) -> np.ndarray:
        """Indices of the background regions, ascending (4 bytes a region: the one array
        of the pool's size that always lives in memory)."""
        if self._bg is None:
            self._bg = _index(self.labels, positive=False)
        return self._bg

    @property
    def nbytes(self) -> int:
        """Bytes of the region arrays (in memory or mapped) and of the computed indices."""
        index = sum(a.nbytes for a in (self._fg, self._bg) if a is not None)
        return self.image_idx.nbytes + self.boxes.nbytes + self.labels.nbytes + index

    @classmethod
    def from_images(cls, per_image: list[tuple[np.ndarray, np.ndarray]]) -> RegionPool:
        """Concatenate ``(boxes, labels)`` of each image (the output of :func:`image_regions`)."""
        builder = PoolBuilder()
        for boxes, labels in per_image:
            builder.add(boxes, labels)
        return builder.finish()


def _as(array: np.ndarray, dtype: type) -> np.ndarray:
    """``array`` as ``dtype`` without a copy when it already is (a memory map stays one)."""
    return (
        array
        if isinstance(array, np.ndarray) and array.dtype == dtype
        else np.asarray(array, dtype=dtype)
    )


INDEX_CHUNK = 1 << 24  # labels scanned at a time: the full boolean mask is never built


def _index(labels: np.ndarray, *, positive: bool) -> np.ndarray:
    """Positions of positive (or background) labels, counted then filled chunk by chunk."""

    def mask(start: int) -> np.ndarray:
        chunk = labels[start : start + INDEX_CHUNK]
        return chunk > 0 if positive else chunk == 0

    starts = range(0, len(labels), INDEX_CHUNK)
    dtype = np.int32 if len(labels) < 2**31 else np.int64
    out = np.empty(sum(int(np.count_nonzero(mask(a))) for a in starts), dtype)
    filled = 0
    for start in starts:
        found = np.flatnonzero(mask(start)) + start
        out[filled : filled + len(found)] = found
        filled += len(found)
    return out


class PoolBuilder:
    """Collects the regions of one image after another into a :class:`RegionPool`.

    Below ``max_bytes`` the regions stay in memory; past it they are appended to three raw
    files in ``spill_dir`` and the finished pool memory-maps them, so building the pool of
    200,000 images never holds it twice (or at all) in memory. ``spill_dir`` None: never
    spill.
    """

    def __init__(self, spill_dir: Path | None = None, max_bytes: int = 0) -> None:
        self.spill_dir, self.max_bytes = spill_dir, max_bytes
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._bytes = 0
        self._files: list | None = None
        self._count = 0
        self._images = 0

    def add(self, boxes: np.ndarray, labels: np.ndarray) -> None:
        """The regions of the next image (image index = the number of images added before)."""
        labels = np.asarray(labels).astype(np.int16).reshape(-1)
        part = (
            np.full(len(labels), self._images, np.int32),
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels,
        )
        self._images += 1
        self._count += len(labels)
        if self._files is not None:
            self._write(part)
            return
        self._parts.append(part)
        self._bytes += sum(a.nbytes for a in part)
        if self.spill_dir is not None and self._bytes > self.max_bytes:
            self._spill()

    def finish(self) -> RegionPool:
        if self._files is None:
            if not self._parts:
                return RegionPool()
            return RegionPool(
                *(np.concatenate(column) for column in zip(*self._parts, strict=True))
            )
        for f in self._files:
            f.close()
        n = self._count
        names = [self.spill_dir / name for name in _SPILL_FILES]
        return RegionPool(
            np.memmap(names[0], np.int32, "r", shape=(n,)) if n else np.zeros(0, np.int32),
            np.memmap(names[1], np.float32, "r", shape=(n, 4)) if n else np.zeros((0, 4)),
            np.memmap(names[2], np.int16, "r", shape=(n,)) if n else np.zeros(0, np.int16),
        )

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._files = [open(self.spill_dir / name, "wb") for name in _SPILL_FILES]  # noqa: SIM115
        for part in self._parts:
            self._write(part)
        self._parts, self._bytes = [], 0

    def _write(self, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        for f, column in zip(self._files, part, strict=True):
            f.write(np.ascontiguousarray(column).tobytes())


_SPILL_FILES = ("image_idx.int32", "boxes.float32", "labels.int16")


def sample_minibatch(
    rng: np.random.Generator,
    pool: RegionPool,
    *,
    batch_size: int,
    fg_fraction: float,
) -> np.ndarray:
    """Draw one mini-batch of region indices from the whole pool (across images).

    ``round(batch_size * fg_fraction)`` positives and the rest background, each drawn without
    replacement; with too few positives the batch is filled with background (and with too
    little background, with more positives). The batch is shuffled, so member seeds change
    both the regions and their order. Deterministic given ``rng``.

    Returns:
        int64[B] indices into ``pool``, B = min(batch_size, regions available); empty for an
        empty pool.
    """
    fg, bg = pool.positives, pool.background
    n_fg = min(int(round(batch_size * fg_fraction)), len(fg))
    n_bg = min(batch_size - n_fg, len(bg))
    n_fg = min(batch_size - n_bg, len(fg))  # top up with positives when background runs short
    chosen = np.concatenate(
        [rng.choice(fg, n_fg, replace=False), rng.choice(bg, n_bg, replace=False)]
    ).astype(np.int64)
    return rng.permutation(chosen)
