"""R-CNN's bounding-box regression targets and their inverse (Girshick et al. 2014, appendix C).

A proposal P and its ground truth G, both internal xyxy boxes, are compared through centres
and sizes (``w = x2 - x1``, centre ``x1 + w / 2``; continuous pixels, so the devkit's "+1"
widths need no special case):

    tx = (Gx - Px) / Pw    ty = (Gy - Py) / Ph    tw = log(Gw / Pw)    th = log(Gh / Ph)

:func:`box_targets` computes ``t``; :func:`apply_box_targets` maps ``(P, t)`` back to a box.
"""

from __future__ import annotations

import math

import numpy as np

# Size deltas are capped before exp(): a box can grow at most 1000/16 times per side, so one
# wild regressor output cannot overflow to infinity (Faster R-CNN's cap; R-CNN had none).
MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def _centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def box_targets(proposals: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The regression targets of each proposal towards its ground truth.

    Args:
        proposals (float[N, 4]), gt (float[N, 4]): internal xyxy, paired row by row; every
            box must have positive width and height.
    Returns:
        float64[N, 4]: ``(tx, ty, tw, th)``.
    """
    p = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if p.shape != g.shape:
        raise ValueError(f"box_targets: {len(p)} proposals but {len(g)} ground truths")
    px, py, pw, ph = _centres_sizes(p)
    gx, gy, gw, gh = _centres_sizes(g)
    if (pw <= 0).any() or (ph <= 0).any() or (gw <= 0).any() or (gh <= 0).any():
        raise ValueError("box_targets: every box needs a positive width and height")
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=-1)


def apply_box_targets(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The boxes that ``deltas`` (the targets of :func:`box_targets`) describe.

    Args:
        proposals (float[..., 4]): internal xyxy.
        deltas (float[..., 4]): ``(tx, ty, tw, th)``, broadcast against ``proposals``.
    Returns:
        float64[..., 4]: internal xyxy (not clipped to the image).
    """
    p = np.asarray(proposals, dtype=np.float64)
    d = np.asarray(deltas, dtype=np.float64)
    px, py, pw, ph = _centres_sizes(p)
    cx = px + pw * d[..., 0]
    cy = py + ph * d[..., 1]
    w = pw * np.exp(np.minimum(d[..., 2], MAX_LOG_SCALE))
    h = ph * np.exp(np.minimum(d[..., 3], MAX_LOG_SCALE))
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the image, each keeping at least 1 x 1 pixel inside it.

    Args:
        boxes (float[..., 4]): internal xyxy.
    Returns:
        float32[..., 4].
    """
    b = np.asarray(boxes, dtype=np.float64)
    x1 = np.clip(b[..., 0], 0, width - 1)
    y1 = np.clip(b[..., 1], 0, height - 1)
    x2 = np.clip(b[..., 2], x1 + 1, width)
    y2 = np.clip(b[..., 3], y1 + 1, height)
    return np.stack([x1, y1, x2, y2], axis=-1).astype(np.float32)
