"""Drawing detections on an image: boxes and ``class score`` labels, one colour per class.

from detector.visualize import draw_detections, save_visualization
save_visualization("vis/dog.jpg.jpg", image, detections, top=20, min_score=0.5)

Only the boxes scoring at least ``min_score`` are drawn (``detector.run`` passes
``inference.vis_threshold``), at most ``top`` of them, the best on top. Each class keeps one
colour in every image (:func:`class_color`). Labels (the class name and score, in black or
white, whichever reads better on the class colour) sit above their box's top-left corner,
or inside it when there is no room above; they stay inside the image and never cover one
another: a label that would is moved to the nearest free place beside its box (and left out
only when the image has no room at all). The best boxes are labelled first.
"""

from __future__ import annotations

import colorsys
import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detector.core.structures import Detections

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2, exclusive ends


def draw_detections(
    image: np.ndarray, detections: Detections, top: int = 20, min_score: float = 0.0
) -> np.ndarray:
    """Draw the ``top`` highest-scoring detections (score >= ``min_score``) on a copy.

    Args:
        image (uint8[H, W, 3]): RGB image the detections refer to.
        detections: boxes in internal xyxy pixels of ``image``.
        top: at most this many boxes (0 = all).
        min_score: boxes scoring below this are not drawn.
    Returns:
        uint8[H, W, 3]: RGB copy with boxes and labels; ``image`` is not modified.
    """
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8).copy())
    w, h = out.size
    order = selected(detections, top, min_score)
    if not order:
        return np.asarray(out).copy()
    draw = ImageDraw.Draw(out)
    font = _font(font_size(w, h))
    thickness = max(1, round(min(w, h) / 250))
    boxes = [_pixel_box(detections.boxes[i], w, h) for i in order]
    texts = [_label_text(detections, i) for i in order]
    sizes = [_text_box(draw, t, font) for t in texts]
    rects = layout_labels(boxes, [(tw, th) for tw, th, _ in sizes], w, h)
    # Lowest score first, so the best boxes end up on top; labels above every box line.
    for k in reversed(range(len(order))):
        color = class_color(int(detections.labels[order[k]]))
        draw.rectangle(boxes[k], outline=color, width=thickness)
    for k, rect in enumerate(rects):
        if rect is None:
            continue
        color = class_color(int(detections.labels[order[k]]))
        draw.rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=color)
        pad, offset = _PAD, sizes[k][2]
        draw.text((rect[0] + pad, rect[1] + pad - offset), texts[k], fill=_ink(color), font=font)
    return np.asarray(out).copy()


def save_visualization(
    path: str | os.PathLike,
    image: np.ndarray,
    detections: Detections,
    top: int = 20,
    min_score: float = 0.0,
) -> Path:
    """Draw and write a JPEG (quality 90); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_detections(image, detections, top=top, min_score=min_score)
    Image.fromarray(drawn).save(path, format="JPEG", quality=90)
    return path


def selected(detections: Detections, top: int, min_score: float) -> list[int]:
    """Indices of the boxes drawn: score >= ``min_score``, best first, at most ``top`` (0 = all)."""
    scores = np.asarray(detections.scores, dtype=np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= min_score]
    return order[:top] if top > 0 else order


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright, stable RGB colour per class (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def font_size(width: int, height: int) -> int:
    """Label text height in pixels: about 3% of the longer side, 11 to 32."""
    return max(11, min(32, round(0.03 * max(width, height))))


def layout_labels(boxes: list[Rect], sizes: list[tuple[int, int]], width: int, height: int):
    """Where each label goes: ``(x1, y1, x2, y2)`` inside the image, no two overlapping.

    Labels are placed in the order given (best box first). Each tries, in turn: above the
    box's top-left corner, inside it at the top, below it, inside it at the bottom (each
    shifted to fit the image); if all of those are taken, the free place nearest the first
    one in the label's column, then anywhere in the image. None: the image is full.
    """
    placed: list[Rect] = []
    out: list[Rect | None] = []
    for (bx1, by1, _bx2, by2), (tw, th) in zip(boxes, sizes, strict=True):
        lw, lh = tw + 2 * _PAD, th + 2 * _PAD
        if lw > width or lh > height:
            out.append(None)
            continue
        x = min(max(bx1, 0), width - lw)
        tries = [by1 - lh, by1, by2 + 1, by2 + 1 - lh]
        rect = next(
            (r for y in tries if not _hits(r := _fit(x, y, lw, lh, width, height), placed)),
            None,
        )
        if rect is None:
            rect = _nearest_free(x, tries[0], lw, lh, width, height, placed)
        out.append(rect)
        if rect is not None:
            placed.append(rect)
    return out


# ---- helpers --------------------------------------------------------------------------------

_PAD = 2  # pixels between the label text and its background's edge


def _fit(x: int, y: int, lw: int, lh: int, width: int, height: int) -> Rect:
    x = min(max(x, 0), width - lw)
    y = min(max(y, 0), height - lh)
    return (x, y, x + lw, y + lh)


def _hits(rect: Rect, placed: list[Rect]) -> bool:
    x1, y1, x2, y2 = rect
    return any(x1 < p[2] and p[0] < x2 and y1 < p[3] and p[1] < y2 for p in placed)


def _nearest_free(x, y, lw, lh, width, height, placed) -> Rect | None:
    """The free label place nearest (x, y): first in the same column, then anywhere."""
    ys = sorted(range(0, height - lh + 1), key=lambda v: abs(v - y))
    for v in ys:
        rect = (x, v, x + lw, v + lh)
        if not _hits(rect, placed):
            return rect
    step = max(1, lw // 4)
    spots = [(u, v) for v in range(0, height - lh + 1, max(1, lh // 2))
             for u in range(0, width - lw + 1, step)]  # fmt: skip
    for u, v in sorted(spots, key=lambda s: abs(s[0] - x) + abs(s[1] - y)):
        rect = (u, v, u + lw, v + lh)
        if not _hits(rect, placed):
            return rect
    return None


def _pixel_box(box: np.ndarray, w: int, h: int) -> Rect:
    """Internal xyxy -> the inclusive pixel rectangle drawn (x2 - 1: the last covered column)."""
    x1, y1 = round(float(box[0])), round(float(box[1]))
    x2, y2 = round(float(box[2])) - 1, round(float(box[3])) - 1
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    return (x1, y1, min(max(x2, x1), w - 1), min(max(y2, y1), h - 1))


def _label_text(detections: Detections, i: int) -> str:
    label = int(detections.labels[i])
    name = detections.class_names[i] if i < len(detections.class_names) else str(label)
    return f"{name} {float(detections.scores[i]):.2f}"


def _text_box(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int, int]:
    """Width, height and top offset of ``text``'s ink."""
    x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=font)
    return x2 - x1 + 1, y2 - y1 + 1, y1


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (relative luminance)."""
    r, g, b = color
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else (255, 255, 255)


@functools.lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType: a scalable font
    except (OSError, TypeError, ImportError):
        return ImageFont.load_default()
