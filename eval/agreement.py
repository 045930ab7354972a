"""How many of one detector's detections another detector keeps, image by image.

What a faster setting (bf16, int8, a cascade) is checked with against the reference run:
a reference detection scoring at least ``min_score`` is kept when the other run has, in the
same image, a detection of the same class scoring at least ``min_score`` that overlaps it at
IoU >= ``iou``.

    kept, total = detections_kept(reference, candidate)  # lists of Detections, image by image
    share = kept / total if total else 1.0
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.core.boxes import box_iou
from detector.core.structures import Detections


def detections_kept(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    *,
    min_score: float = 0.1,
    iou: float = 0.5,
) -> tuple[int, int]:
    """(kept, total): the reference detections scoring >= ``min_score`` (total) and how many of
    them ``candidate`` keeps (same image, same class, IoU >= ``iou``, score >= ``min_score``).

    Args:
        reference, candidate: the detections of the same images, in the same order.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} to compare")
    kept = total = 0
    for r, d in zip(reference, candidate, strict=True):
        keep_r, keep_d = r.scores >= min_score, d.scores >= min_score
        total += int(keep_r.sum())
        if keep_r.any() and keep_d.any():
            overlap = box_iou(r.boxes[keep_r], d.boxes[keep_d])
            same = r.labels[keep_r][:, None] == d.labels[keep_d][None, :]
            kept += int(((overlap >= iou) & same).any(axis=1).sum())
    return kept, total
