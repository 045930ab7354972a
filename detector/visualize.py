"""Drawing detections on an image: boxes and ``class score`` labels, one colour per class.

from detector.visualize import draw_detections, save_visualization
save_visualization("vis/dog.jpg", image, detections, top=20)
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from detector.core.structures import Detections

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_detections(
    image: np.ndarray, detections: Detections, top: int = 20, min_score: float = 0.0
) -> np.ndarray:
    """Draw the ``top`` highest-scoring detections (score >= ``min_score``) on a copy.

    Args:
        image (uint8[H, W, 3]): RGB image the detections refer to.
        detections: boxes in internal xyxy pixels of ``image``.
        top: at most this many boxes (0 = all).
    Returns:
        uint8[H, W, 3]: RGB copy with boxes and labels; ``image`` is not modified.
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    order = np.argsort(-detections.scores, kind="stable")
    order = [i for i in order if detections.scores[i] >= min_score]
    if top > 0:
        order = order[:top]
    # Lowest score first, so the best boxes and labels end up on top.
    for i in reversed(order):
        label = int(detections.labels[i])
        name = detections.class_names[i] if i < len(detections.class_names) else str(label)
        _draw_one(out, detections.boxes[i], f"{name} {detections.scores[i]:.2f}", label, thickness)
    return out


def save_visualization(
    path: str | os.PathLike, image: np.ndarray, detections: Detections, top: int = 20
) -> Path:
    """Draw and write a JPEG (quality 90); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_detections(image, detections, top=top)).save(path, quality=90)
    return path


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright, stable RGB colour per class (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_one(out: np.ndarray, box: np.ndarray, text: str, label: int, thickness: int) -> None:
    h, w = out.shape[:2]
    # Internal boxes cover pixels x1 .. x2-1: the last drawn column is x2 - 1.
    x1, y1 = int(round(float(box[0]))), int(round(float(box[1])))
    x2, y2 = int(round(float(box[2]))) - 1, int(round(float(box[3]))) - 1
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    x2, y2 = min(max(x2, x1), w - 1), min(max(y2, y1), h - 1)
    color = class_color(label)
    cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
    scale = max(0.35, min(h, w) / 900)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, h - base - 1)
    cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), color, -1)
    cv2.putText(out, text, (x1 + 1, ty), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
