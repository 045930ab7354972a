"""Selective search (Uijlings et al. 2013) as R-CNN runs it, on OpenCV's low-level API.

R-CNN's ILSVRC protocol: resize the image to width 500, run the "fast mode" hierarchy
(colour spaces HSV and Lab x Felzenszwalb k in {50, 100}, min_size = k, sigma 0.8 x two
similarity mixes = 8 hierarchical groupings), drop boxes with a side < 20 resized pixels and
map them back to the original image. The GoogLeNet entry doubled the superpixel size
(k in {100, 200}), which roughly halves the number of boxes: :data:`DOUBLED`, the default.

OpenCV orders its output by an unseeded ``rand()``, so the result is treated as a set:
deduplicated and sorted lexicographically on ``(x1, y1, x2, y2)``. Never truncate it to
"the first N" boxes.

Example::

    from skimage import data
    from proposals.selective_search import RCNN_FAST, selective_search

    boxes = selective_search(data.astronaut())             # doubled superpixels
    boxes_rcnn = selective_search(data.astronaut(), **RCNN_FAST)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from detector.core.config import SelectiveSearchConfig

_DEFAULTS = SelectiveSearchConfig()  # the paper's settings, defined once in the config

_seg = cv2.ximgproc.segmentation

# Keyword presets for :func:`selective_search`.
RCNN_FAST: dict = {"ks": (50, 100)}  # R-CNN's fast mode
DOUBLED: dict = {"ks": (100, 200)}  # superpixel size doubled (the paper's section 8)

# RGB -> the colour spaces the hierarchies run in. Our images are RGB, so use the RGB2* codes
# (OpenCV's own fast mode calls BGR2* on its BGR images: the same result).
_COLOR_CODES: dict[str, int | None] = {
    "hsv": cv2.COLOR_RGB2HSV,
    "lab": cv2.COLOR_RGB2Lab,
    "rgb": None,
    "ycrcb": cv2.COLOR_RGB2YCrCb,
    "hls": cv2.COLOR_RGB2HLS,
}

_STRATEGY_BUILDERS = {
    "color": _seg.createSelectiveSearchSegmentationStrategyColor,
    "texture": _seg.createSelectiveSearchSegmentationStrategyTexture,
    "size": _seg.createSelectiveSearchSegmentationStrategySize,
    "fill": _seg.createSelectiveSearchSegmentationStrategyFill,
}


def selective_search(
    image: np.ndarray,
    *,
    resize_width: int = _DEFAULTS.resize_width,
    ks: Sequence[int] = tuple(_DEFAULTS.ks),
    min_size_factor: float = _DEFAULTS.min_size_factor,
    sigma: float = _DEFAULTS.sigma,
    color_spaces: Sequence[str] = tuple(_DEFAULTS.color_spaces),
    strategies: Sequence[str] = tuple(_DEFAULTS.strategies),
    min_side: int = _DEFAULTS.min_side,
    max_side: int = _DEFAULTS.max_side,
) -> np.ndarray:
    """Selective-search boxes of one image, in original-image pixels.

    Args:
        image (uint8[H, W, 3]): RGB; gray ``uint8[H, W]`` and RGBA ``uint8[H, W, 4]`` are
            converted (alpha dropped).
        resize_width: the image is resized to this width (aspect kept) before segmenting,
            also when that upscales it (R-CNN's protocol).
        ks: Felzenszwalb ``k`` of each graph segmentation.
        min_size_factor: Felzenszwalb ``min_size = round(factor * k)``.
        sigma: Gaussian smoothing of the graph segmentation.
        color_spaces: colour spaces the hierarchies run in (hsv, lab, rgb, ycrcb, hls).
        strategies: similarity mixes, each ``"+"``-joined from color, texture, size, fill
            (equal weights).
        min_side: boxes with a side below this many resized pixels are dropped.
        max_side: the resized image's longer side is at most this: a long strip is scaled
            to it instead of to ``resize_width`` (upscaling a 20x10000 strip to width 224
            would make it 224x112000).

    Returns:
        boxes (float32[N, 4]): internal xyxy, clipped to the image, no exact duplicates,
        sorted lexicographically. An image too small to hold a ``min_side`` box once
        resized (including a 0-pixel image) gives ``N = 0``.

    Raises:
        ValueError: on a wrong dtype or shape, an unknown colour space or strategy, or a
        non-positive ``resize_width`` or ``max_side``.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    new_w, new_h = _resized_size(width, height, resize_width, max_side)
    # Validate the settings even when the image is too small, so bad settings fail early.
    segmenter = _build_segmenter(ks, min_size_factor, sigma, strategies)
    _check_color_spaces(color_spaces)
    if min(new_w, new_h) < max(min_side, 1):
        return np.zeros((0, 4), dtype=np.float32)
    resized = _resize(rgb, new_w, new_h)
    for name in color_spaces:
        segmenter.addImage(_convert(resized, name))
    rects = segmenter.process()  # int[M, 4] (x, y, w, h) in resized pixels
    boxes = _filter_and_map(np.asarray(rects).reshape(-1, 4), min_side, width, height, new_w, new_h)
    return canonical_boxes(boxes)


def settings_from_config(cfg: SelectiveSearchConfig) -> dict[str, Any]:
    """The :func:`selective_search` keyword arguments of a config stage (also the cache settings).

    ``enabled``, ``workers`` and ``cache_dir`` configure the callers, not the algorithm.
    """
    names = set(inspect.signature(selective_search).parameters) - {"image"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}


def canonical_boxes(boxes: np.ndarray) -> np.ndarray:
    """Exact duplicates removed, sorted lexicographically on (x1, y1, x2, y2).

    boxes (float32[N, 4]) -> float32[M, 4], M <= N.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes
    return np.unique(boxes, axis=0)  # np.unique sorts rows lexicographically


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 gray / RGB / RGBA -> contiguous uint8[H, W, 3] RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"selective_search: expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"selective_search: expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}"
        )
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _resized_size(width: int, height: int, resize_width: int, max_side: int) -> tuple[int, int]:
    """(new_w, new_h): width ``resize_width``, aspect kept, unless that makes the longer side
    exceed ``max_side``: then the longer side is ``max_side``. (0, 0) for an empty image."""
    if resize_width <= 0:
        raise ValueError(f"selective_search: resize_width must be positive, got {resize_width}")
    if max_side <= 0:
        raise ValueError(f"selective_search: max_side must be positive, got {max_side}")
    if width == 0 or height == 0:
        return 0, 0
    new_w, new_h = resize_width, max(1, round(height * resize_width / width))
    if max(new_w, new_h) <= max_side:
        return new_w, new_h
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(rgb: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[new_h, new_w, 3].

    Area averaging when shrinking (antialiased, like the MATLAB ``imresize`` R-CNN used),
    bicubic when enlarging.
    """
    height, width = rgb.shape[:2]
    if (new_w, new_h) == (width, height):
        return rgb
    shrink = new_w * new_h < width * height
    return cv2.resize(
        rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )


def _build_segmenter(
    ks: Sequence[int], min_size_factor: float, sigma: float, strategies: Sequence[str]
) -> cv2.ximgproc.segmentation.SelectiveSearchSegmentation:
    """An OpenCV segmenter with one graph segmentation per k and one strategy per mix."""
    if not ks or not strategies:
        raise ValueError("selective_search: ks and strategies must not be empty")
    segmenter = _seg.createSelectiveSearchSegmentation()
    segmenter.clearImages()
    segmenter.clearGraphSegmentations()
    segmenter.clearStrategies()
    for k in ks:
        min_size = int(round(min_size_factor * k))
        segmenter.addGraphSegmentation(_seg.createGraphSegmentation(sigma, float(k), min_size))
    for mix in strategies:
        segmenter.addStrategy(_build_strategy(mix))
    return segmenter


def _build_strategy(mix: str) -> cv2.ximgproc.segmentation.SelectiveSearchSegmentationStrategy:
    """``"color+texture+size+fill"`` -> a Multiple strategy with equal weights."""
    names = [part.strip().lower() for part in mix.split("+")]
    unknown = [n for n in names if n not in _STRATEGY_BUILDERS]
    if unknown or not names:
        raise ValueError(
            f"selective_search: unknown strategy {mix!r} (parts: {', '.join(_STRATEGY_BUILDERS)})"
        )
    multiple = _seg.createSelectiveSearchSegmentationStrategyMultiple()
    for name in names:
        multiple.addStrategy(_STRATEGY_BUILDERS[name](), 1.0 / len(names))
    return multiple


def _check_color_spaces(color_spaces: Sequence[str]) -> None:
    if not color_spaces:
        raise ValueError("selective_search: color_spaces must not be empty")
    for name in color_spaces:
        if name.lower() not in _COLOR_CODES:
            raise ValueError(
                f"selective_search: unknown colour space {name!r} ({', '.join(_COLOR_CODES)})"
            )


def _convert(rgb: np.ndarray, name: str) -> np.ndarray:
    code = _COLOR_CODES[name.lower()]
    return rgb if code is None else cv2.cvtColor(rgb, code)


def _filter_and_map(
    rects: np.ndarray, min_side: int, width: int, height: int, new_w: int, new_h: int
) -> np.ndarray:
    """OpenCV rects (int[M, 4] x, y, w, h, resized) -> float32[K, 4] xyxy in original pixels.

    A rect covers resized columns x .. x+w-1, i.e. continuous [x, x+w); continuous coordinates
    scale exactly by W/new_w (and H/new_h), so boxes touching the resized border touch the
    original border.
    """
    keep = (rects[:, 2] >= min_side) & (rects[:, 3] >= min_side)
    rects = rects[keep].astype(np.float64)
    sx, sy = width / new_w, height / new_h
    boxes = np.stack(
        [
            rects[:, 0] * sx,
            rects[:, 1] * sy,
            (rects[:, 0] + rects[:, 2]) * sx,
            (rects[:, 1] + rects[:, 3]) * sy,
        ],
        axis=1,
    ).reshape(-1, 4)
    np.clip(boxes[:, 0::2], 0.0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0.0, height, out=boxes[:, 1::2])
    return boxes.astype(np.float32)
