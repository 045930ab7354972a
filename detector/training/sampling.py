"""R-CNN region sampling for classifier fine-tuning.

Every proposal of a training image is labelled by its best overlap with the image's ground
truth (R-CNN): IoU >= ``fg_iou`` with a ground truth -> that ground truth's class, max IoU
< ``bg_iou`` -> background (0), anything in between -> ignored (-1; never sampled). The
ground-truth boxes themselves join the pool as positives. A mini-batch of ``batch_size``
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

import numpy as np

from detector.core.boxes import box_iou

IGNORE = -1  # label of a region with bg_iou <= max IoU < fg_iou: neither positive nor background


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
) -> tuple[np.ndarray, np.ndarray]:
    """The training regions of one image: its ground truths (positives) then its labelled proposals.

    Ignored proposals (between bg_iou and fg_iou) are dropped.
    Returns:
        boxes (float32[G + P', 4]), labels (int64[G + P']).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    labels, _ = label_proposals(proposals, gt_boxes, gt_labels, fg_iou=fg_iou, bg_iou=bg_iou)
    keep = labels != IGNORE
    return (
        np.concatenate([gt_boxes, proposals[keep]]),
        np.concatenate([gt_labels, labels[keep]]),
    )


@dataclass
class RegionPool:
    """All training regions of a split, as arrays (one row per region).

    Attributes:
        image_idx (int64[R]): position of the region's image in the training list.
        boxes (float32[R, 4]): internal xyxy in that image's pixels.
        labels (int64[R]): 0 background, 1..K class id.
    """

    image_idx: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.image_idx = np.asarray(self.image_idx, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.image_idx) == len(self.boxes) == len(self.labels):
            raise ValueError("RegionPool: image_idx, boxes and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_positives(self) -> int:
        return int((self.labels > 0).sum())

    @classmethod
    def from_images(cls, per_image: list[tuple[np.ndarray, np.ndarray]]) -> RegionPool:
        """Concatenate ``(boxes, labels)`` of each image (the output of :func:`image_regions`)."""
        if not per_image:
            return cls()
        idx = [np.full(len(lab), i, np.int64) for i, (_, lab) in enumerate(per_image)]
        return cls(
            np.concatenate(idx),
            np.concatenate([b for b, _ in per_image]),
            np.concatenate([lab for _, lab in per_image]),
        )


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
    fg = np.flatnonzero(pool.labels > 0)
    bg = np.flatnonzero(pool.labels == 0)
    n_fg = min(int(round(batch_size * fg_fraction)), len(fg))
    n_bg = min(batch_size - n_fg, len(bg))
    n_fg = min(batch_size - n_bg, len(fg))  # top up with positives when background runs short
    chosen = np.concatenate(
        [rng.choice(fg, n_fg, replace=False), rng.choice(bg, n_bg, replace=False)]
    ).astype(np.int64)
    return rng.permutation(chosen)
