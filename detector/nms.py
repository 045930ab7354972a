"""Per-class greedy non-maximum suppression of scored proposals (R-CNN's detection step).

IoU convention: boxes are internal continuous xyxy, so the plain IoU torchvision computes,
``area = (x2 - x1) * (y2 - y1)``, equals the devkit's "+1" IoU of the inclusive boxes. A box
is suppressed when its IoU with a higher-scoring kept box of the same class is strictly
greater than ``nms_iou`` (torchvision's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class NmsSettings:
    """The detection step's settings (``inference.*`` in the config; see :func:`per_class_nms`)."""

    nms_iou: float
    score_threshold: float
    max_per_class: int
    max_detections: int


def per_class_nms(
    boxes: np.ndarray,
    probs: np.ndarray,
    *,
    nms_iou: float,
    score_threshold: float,
    max_per_class: int,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections from class probabilities: threshold, NMS per class, cap, sort.

    All classes go through one ``batched_nms`` call, on the (box, class) pairs whose
    probability exceeds ``score_threshold``.

    Args:
        boxes (float32[N, 4] or float32[N, C, 4]): internal xyxy; per class (column k the
            box of class k, e.g. after box regression) or one box for every class.
        probs (float32[N, C]): class probabilities, column 0 the background (never detected).
        nms_iou: suppress same-class boxes overlapping a better one by more than this.
        score_threshold: keep (box, class) pairs with probability strictly above this.
        max_per_class: keep at most this many per class (0 = no limit).
        max_detections: keep at most this many in all (0 = no limit).
    Returns:
        boxes (float32[M, 4]), scores (float32[M]), labels (int64[M], 1..C-1), by descending
        score (ties: lower box index, then lower class id, first).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    per_class = boxes.ndim == 3
    boxes = boxes if per_class else boxes.reshape(-1, 4)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or len(probs) != len(boxes):
        raise ValueError(
            f"per_class_nms: probs must be [N, C] with N = {len(boxes)} boxes, got {probs.shape}"
        )
    if per_class and boxes.shape[1:] != (probs.shape[1], 4):
        raise ValueError(f"per_class_nms: per-class boxes must be [N, C, 4], got {boxes.shape}")
    rows, cols = np.nonzero(probs[:, 1:] > score_threshold)  # row-major: box, then class
    if len(rows) == 0:
        return _empty()
    labels = cols.astype(np.int64) + 1
    scores = probs[rows, labels]
    candidates = np.ascontiguousarray(boxes[rows, labels] if per_class else boxes[rows])
    keep = batched_nms(
        torch.from_numpy(candidates),
        torch.from_numpy(scores),
        torch.from_numpy(labels),
        nms_iou,
    ).numpy()
    # batched_nms sorts by score but not stably: restore a deterministic order on ties.
    keep = keep[np.lexsort((keep, -scores[keep]))]
    if max_per_class > 0:
        keep = keep[_rank_within_class(labels[keep]) < max_per_class]
    if max_detections > 0:
        keep = keep[:max_detections]
    return candidates[keep], scores[keep], labels[keep]


def _rank_within_class(labels: np.ndarray) -> np.ndarray:
    """0-based position of each element among the earlier elements of its class.

    Args:
        labels (int64[M]): in score order.
    Returns:
        int64[M].
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - group_start
    return rank


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.zeros((0, 4), dtype=np.float32),
        np.zeros((0,), dtype=np.float32),
        np.zeros((0,), dtype=np.int64),
    )
