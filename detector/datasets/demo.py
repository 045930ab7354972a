"""The embedded demo dataset: a seeded generator writing a small ILSVRC DET tree.

The demo exercises the same readers as real data (:class:`detector.datasets.ilsvrc.IlsvrcDet`):

    <root>/Data/DET/<split>/<name>.JPEG
    <root>/Annotations/DET/<split>/<name>.xml   (<size>, <object><name>wnid</name><bndbox>
                                                 xmin, xmax, ymin, ymax: inclusive, 0-based)
    <root>/ImageSets/DET/<split>.txt            ('<name> <index>', index 1-based)
    <root>/map_det.txt                          ('<wnid> <id> <name>')
    <root>/demo_dataset.json                    (marker: generator version and settings)

Splits ``train`` and ``val``. Images are 256-320 px on the long side (aspect 1, 4:3 or 3:2,
either orientation). Each shows 1-4 objects of six classes cut from photographs that
scikit-image ships offline (cat face, coffee cup, astronaut, horse silhouette with a
generated coat, coins, the scikit-image snake logo), scaled from ~40 px to most of the
image, with aspect jitter, flips, rotation up to 20 degrees, colour and brightness jitter,
rare occlusion and truncation at the border, pasted on crops of real textures and photos
(grass, gravel, brick, moon, Hubble, histology, ...) with lighting gradients and noise. Every
20th image (position 10 mod 20) has no objects. A box is the extent of the object's visible
pixels (its pasted alpha > 0.5, not covered by a later object), so it stays exact after
rotation, occlusion and truncation.

Generation is deterministic: image ``i`` of a split depends only on ``(seed, split, i)``;
JPEGs are written by Pillow at a fixed quality, XML by plain string formatting, so two runs
give byte-identical trees. 240 + 40 images take about 4 s of CPU (~7 MB).

:func:`ensure_demo_dataset` generates on first use into ``cfg.data.demo_dir`` (or a given
folder), else ``<cache>/demo/v<version>``, where ``<cache>`` is ``$INCEPTION_RCNN_CACHE``
if set, else ``~/.cache/inception-rcnn`` (``detector.core.paths.cache_root``). It writes into a
temporary sibling folder and renames it into place once complete, marker last, so a
half-written tree is never used.

Examples:
    python -m detector.datasets.demo --out /tmp/demo
    python -m detector.datasets.demo --out /tmp/demo --train 240 --val 40 --seed 0 --preview /tmp/prev
    python -m detector.datasets.demo          # into the default cache folder
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from detector.core.io import load_image
from detector.core.paths import cache_root, expand
from detector.core.structures import ClassList

GENERATOR_VERSION = 1  # bump when the output changes; the default cache folder is per version
MARKER = "demo_dataset.json"
CACHE_ENV = (
    "INCEPTION_RCNN_CACHE"  # cache root (detector.core.paths); default ~/.cache/inception-rcnn
)
JPEG_QUALITY = 90  # fixed so that the files are reproducible
LONG_SIDE = (256, 320)  # image long side in pixels, inclusive range
ASPECTS = (1.0, 4 / 3, 3 / 2)  # long / short side
EMPTY_EVERY, EMPTY_AT = 20, 10  # image i has no objects when i % 20 == 10
MAX_OBJECTS = 4
OBJECT_COUNT_P = (0.35, 0.3, 0.2, 0.15)  # P(1 .. 4 objects)
MAX_ROTATION = 20.0  # degrees
OCCLUDE_P = 0.15  # chance that a further object may overlap earlier ones
MIN_VISIBLE = 0.6  # an occluded object keeps at least this fraction of its pixels
TRUNCATE_P = 0.1  # chance that an object may be cut by the image border
MIN_BOX_SIDE = 16  # pixels; smaller visible boxes are rejected
ATTEMPTS = 25  # placement tries per object before it is skipped

DEMO_CLASSES = ClassList(
    wnids=[f"d{i:07d}" for i in range(1, 7)],  # made-up wnids: not ILSVRC classes
    names=["cat", "coffee cup", "astronaut", "horse", "coin", "snake logo"],
)
# Object size range per class: long side of the box from MIN px to FRAC x the short image side.
SIZE_RANGE = {1: (44, 0.9), 2: (40, 0.9), 3: (48, 0.9), 4: (44, 0.9), 5: (32, 0.45), 6: (40, 0.8)}


@dataclass
class Template:
    """An object cut-out: rgb (float32[h, w, 3], 0..255) and alpha (float32[h, w], 0..1)."""

    rgb: np.ndarray
    alpha: np.ndarray


@dataclass
class DemoSample:
    """One generated image with its ground truth.

    Attributes:
        image (uint8[H, W, 3]): RGB, before JPEG encoding.
        boxes (float32[N, 4]): internal xyxy of the visible pixels of each object.
        labels (int64[N]): class ids 1..6 (see :data:`DEMO_CLASSES`).
        masks (bool[N, H, W]): visible pixels of each object.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


# ---------------------------------------------------------------------------- sources


def _skimage_data():
    from skimage import data  # imported lazily: only the generator needs it

    return data


def _ellipse_alpha(shape: tuple[int, int], ellipses: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Union of filled ellipses ``(cx, cy, ax, ay)``, edges softened: float32[h, w] in 0..1."""
    mask = np.zeros(shape, np.uint8)
    for cx, cy, ax, ay in ellipses:
        cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 255, -1, lineType=cv2.LINE_AA)
    return _soften(mask > 127)


def _soften(mask: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _cut(rgb: np.ndarray, alpha: np.ndarray, max_side: int = 320) -> Template:
    """Crop to the alpha's extent and shrink so the long side is at most ``max_side``."""
    ys, xs = np.nonzero(alpha > 0.01)
    rgb = rgb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    f = max_side / max(alpha.shape)
    if f < 1:
        size = (round(alpha.shape[1] * f), round(alpha.shape[0] * f))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return Template(rgb, np.clip(alpha, 0, 1))


def _cat(d) -> list[Template]:
    img = d.chelsea()
    return [_cut(img, _ellipse_alpha(img.shape[:2], [(225, 160, 185, 135)]))]


def _coffee_cup(d) -> list[Template]:
    img = d.coffee()
    return [_cut(img, _ellipse_alpha(img.shape[:2], [(278, 225, 205, 162)]))]


def _astronaut(d) -> list[Template]:
    """Head, collar ring and torso of the astronaut as a bust."""
    img = d.astronaut()
    parts = [(228, 92, 70, 82), (212, 220, 100, 72), (215, 390, 195, 160)]
    return [_cut(img, _ellipse_alpha(img.shape[:2], parts))]


def _horse(d) -> list[Template]:
    """The silhouette with a grey fur-like texture; the coat colour is chosen per instance."""
    mask = ~d.horse()
    texture = cv2.resize(d.gravel(), (mask.shape[1], mask.shape[0])).astype(np.float32)
    texture = cv2.GaussianBlur(texture, (0, 0), 2.0)
    texture = 1.0 + 0.08 * (texture - texture.mean()) / (texture.std() + 1e-6)
    rows = np.linspace(0, 1, mask.shape[0], dtype=np.float32)[:, None]
    shade = 1.05 - 0.35 * np.clip(rows - 0.55, 0, 1) / 0.45  # darker legs
    grey = np.clip(128 * texture * shade, 0, 255)
    return [_cut(np.repeat(grey[..., None], 3, axis=2), _soften(mask, 1.0))]


def _coins(d) -> list[Template]:
    """Each round coin of ``skimage.data.coins`` cut out by its own mask."""
    from scipy import ndimage

    img = d.coins()
    fg = ndimage.binary_fill_holes(img > 107)  # 107 = Otsu threshold of this image
    fg = ndimage.binary_opening(fg, iterations=2)
    labels, n = ndimage.label(fg)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        region = labels[sl] == i
        h, w = region.shape
        if not 900 <= region.sum() <= 4000 or region.sum() < 0.7 * np.pi * h * w / 4:
            continue  # specks and merged coins; keep the round ones
        grey = np.repeat(img[sl][..., None], 3, axis=2)
        out.append(_cut(grey, _soften(region, 0.8)))
    return out


def _logo(d) -> list[Template]:
    """The disc of the scikit-image logo (its alpha is opaque: cut the white away)."""
    from scipy import ndimage

    rgb = d.logo()[..., :3]
    disc = ndimage.binary_fill_holes(rgb.astype(np.int32).sum(axis=2) < 3 * 235)
    return [_cut(rgb, _soften(disc, 1.0))]


@functools.lru_cache(maxsize=1)
def templates() -> dict[int, list[Template]]:
    """Object cut-outs per class id (1..6), built once per process."""
    d = _skimage_data()
    builders = [_cat, _coffee_cup, _astronaut, _horse, _coins, _logo]
    return {i + 1: build(d) for i, build in enumerate(builders)}


# Backgrounds: (skimage name, RGB tint for greyscale images or None for colour photos).
BACKGROUNDS = (
    ("grass", (0.75, 1.0, 0.55)),
    ("gravel", (1.0, 0.92, 0.8)),
    ("brick", (1.0, 0.72, 0.6)),
    ("moon", (1.0, 1.0, 1.0)),
    ("camera", (1.0, 0.97, 0.92)),
    ("text", (1.0, 0.97, 0.88)),
    ("page", (0.95, 0.95, 1.0)),
    ("cell", (0.8, 0.9, 1.0)),
    ("hubble_deep_field", None),
    ("immunohistochemistry", None),
    ("rocket", None),
)


@functools.lru_cache(maxsize=1)
def backgrounds() -> list[tuple[np.ndarray, tuple[float, float, float] | None]]:
    """Background photos (uint8[H, W] or uint8[H, W, 3]) with their tints."""
    d = _skimage_data()
    return [(getattr(d, name)(), tint) for name, tint in BACKGROUNDS]


# ---------------------------------------------------------------------------- rendering


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): long side in LONG_SIDE, aspect from ASPECTS, 70% landscape."""
    long = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    short = round(long / ASPECTS[rng.integers(len(ASPECTS))])
    return (short, long) if rng.random() < 0.7 else (long, short)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A jittered crop of one (sometimes two blended) background photos: float32[h, w, 3]."""
    out = _background_layer(rng, h, w)
    if rng.random() < 0.3:
        t = rng.uniform(0.25, 0.5)
        out = (1 - t) * out + t * _background_layer(rng, h, w)
    return out


def _background_layer(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    photo, tint = backgrounds()[rng.integers(len(BACKGROUNDS))]
    sh, sw = photo.shape[:2]
    f = min(rng.uniform(0.7, 1.6), sh / h, sw / w)  # crop size relative to the output
    ch, cw = max(8, int(h * f)), max(8, int(w * f))
    y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    crop = crop.astype(np.float32)
    if crop.ndim == 2:
        crop = crop[..., None] * np.array(tint, np.float32)
    gains = rng.uniform(0.85, 1.15, 3).astype(np.float32) * rng.uniform(0.75, 1.2)
    crop = crop * gains
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _colourise(rng: np.random.Generator, class_id: int, rgb: np.ndarray) -> np.ndarray:
    """Per-instance appearance: coat colour (horse), metal (coin), else photo jitter."""
    if class_id == 4:
        coats = [(150, 75, 35), (105, 60, 35), (45, 38, 35), (160, 160, 160), (205, 165, 95)]
        colour = np.array(coats[rng.integers(len(coats))], np.float32) / 128
        rgb = rgb * colour * rng.uniform(0.85, 1.15)
    elif class_id == 5:
        metals = [(1.0, 1.0, 1.02), (1.15, 0.95, 0.55), (1.1, 0.75, 0.55)]
        rgb = rgb * np.array(metals[rng.integers(len(metals))], np.float32)
    mean = rgb.mean(axis=(0, 1), keepdims=True)
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + rng.uniform(0.8, 1.2) * (rgb - grey)  # saturation
    rgb = mean + rng.uniform(0.8, 1.2) * (rgb - mean)  # contrast
    return rgb * rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3).astype(np.float32)


def _instance(rng: np.random.Generator, class_id: int, short_side: int) -> Template:
    """A resized, flipped, rotated and recoloured copy of one of the class's templates."""
    options = templates()[class_id]
    t = options[rng.integers(len(options))]
    lo, hi = SIZE_RANGE[class_id]
    long = np.exp(rng.uniform(np.log(lo), np.log(max(lo + 1, hi * short_side))))
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    th, tw = t.alpha.shape
    s = long / max(tw * np.sqrt(aspect), th / np.sqrt(aspect))
    size = (max(4, round(tw * s * np.sqrt(aspect))), max(4, round(th * s / np.sqrt(aspect))))
    rgba = np.dstack([t.rgb, t.alpha])
    rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        rgba = rgba[:, ::-1]
    rgba = _rotate(rgba, rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    return Template(_colourise(rng, class_id, rgba[..., :3]), np.clip(rgba[..., 3], 0, 1))


def _rotate(rgba: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre onto a canvas that holds the whole result (outside: alpha 0)."""
    h, w = rgba.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    m[:, 2] += (nw - w) / 2, (nh - h) / 2
    flags = cv2.INTER_LINEAR
    return cv2.warpAffine(np.ascontiguousarray(rgba), m, (nw, nh), flags=flags, borderValue=0)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (xmin, ymin, xmax, ymax) of the True pixels, None when there are none."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if len(cols) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _fit(obj: Template, h: int, w: int) -> Template:
    """Shrink an instance whose box would not fit in 95% of the image."""
    x0, y0, x1, y1 = _mask_box(obj.alpha > 0.5)
    f = min(1.0, 0.95 * w / (x1 - x0 + 1), 0.95 * h / (y1 - y0 + 1))
    if f >= 1.0:
        return obj
    size = (max(4, int(obj.alpha.shape[1] * f)), max(4, int(obj.alpha.shape[0] * f)))
    rgba = cv2.resize(np.dstack([obj.rgb, obj.alpha]), size, interpolation=cv2.INTER_AREA)
    return Template(rgba[..., :3], rgba[..., 3])


def _try_place(
    rng: np.random.Generator,
    obj: Template,
    owner: np.ndarray,
    areas: list[int],
    *,
    may_occlude: bool,
    slack: float,
) -> tuple[int, int, np.ndarray] | None:
    """Pick an offset for ``obj``; None when this try breaks a rule.

    Rules: the visible box keeps sides >= MIN_BOX_SIDE and >= half of the object's pixels
    (``slack``: the fraction of the box that may leave the image); unless ``may_occlude``
    its box must hold no earlier object's pixels, else every earlier object keeps
    MIN_VISIBLE of its pixels. Returns (x, y, mask bool[H, W]).
    """
    h, w = owner.shape
    solid = obj.alpha > 0.5
    bx0, by0, bx1, by1 = _mask_box(solid)
    bw, bh = bx1 - bx0 + 1, by1 - by0 + 1
    x = int(rng.integers(-bx0 - int(slack * bw), w - bx1 - 1 + int(slack * bw) + 1))
    y = int(rng.integers(-by0 - int(slack * bh), h - by1 - 1 + int(slack * bh) + 1))
    mask = np.zeros((h, w), bool)
    _paste(mask, solid, x, y)
    box = _mask_box(mask)
    if box is None or mask.sum() < 0.5 * solid.sum():
        return None
    if min(box[2] - box[0], box[3] - box[1]) + 1 < MIN_BOX_SIDE:
        return None
    hits = owner[mask]
    if not may_occlude:
        taken = owner[max(0, box[1] - 4) : box[3] + 5, max(0, box[0] - 4) : box[2] + 5]
        return (x, y, mask) if (taken < 0).all() else None
    lost = np.bincount(hits[hits >= 0], minlength=len(areas))
    kept = [np.sum(owner == k) - lost[k] for k in range(len(areas))]
    ok = all(kept[k] >= MIN_VISIBLE * areas[k] for k in range(len(areas)))
    return (x, y, mask) if ok else None


def _paste(dst: np.ndarray, src: np.ndarray, x: int, y: int, alpha: np.ndarray | None = None):
    """Copy (or alpha-blend when ``alpha`` is given) ``src`` into ``dst`` at offset (x, y)."""
    h, w = dst.shape[:2]
    sh, sw = src.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + sw), min(h, y + sh)
    if x0 >= x1 or y0 >= y1:
        return
    part = src[y0 - y : y1 - y, x0 - x : x1 - x]
    if alpha is None:
        dst[y0:y1, x0:x1] = part
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    dst[y0:y1, x0:x1] = dst[y0:y1, x0:x1] * (1 - a) + part * a


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A linear illumination gradient, global exposure and sensor noise."""
    h, w = image.shape[:2]
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    gain = (1 + gx * xs + gy * ys) * rng.uniform(0.85, 1.15)
    noise = rng.normal(0, rng.uniform(0.5, 3.0), image.shape).astype(np.float32)
    return image * gain[..., None] + noise


def split_code(split: str) -> int:
    """A stable number per split name (seeds the split's images)."""
    return zlib.crc32(split.encode())


def render_sample(seed: int, split: str, index: int) -> DemoSample:
    """Image ``index`` (0-based) of ``split``: depends only on ``(seed, split, index)``."""
    rng = np.random.default_rng([seed, split_code(split), index])
    h, w = _image_size(rng)
    image = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)  # which object each pixel shows, -1 = background
    labels: list[int] = []
    areas: list[int] = []
    n = 0 if index % EMPTY_EVERY == EMPTY_AT else 1 + rng.choice(MAX_OBJECTS, p=OBJECT_COUNT_P)
    for k in range(n):
        # The first object cycles through the classes so every split covers all of them.
        class_id = index % len(DEMO_CLASSES) + 1 if k == 0 else int(rng.integers(1, 7))
        obj = _fit(_instance(rng, class_id, min(h, w)), h, w)
        # Drawn once per object, not per try, so that occlusion and truncation stay rare.
        may_occlude = k > 0 and rng.random() < OCCLUDE_P
        slack = 0.35 if rng.random() < TRUNCATE_P else 0.0
        for _ in range(ATTEMPTS):
            placed = _try_place(rng, obj, owner, areas, may_occlude=may_occlude, slack=slack)
            if placed is not None:
                x, y, mask = placed
                _paste(image, obj.rgb, x, y, obj.alpha)
                owner[mask] = len(labels)
                labels.append(class_id)
                areas.append(int(mask.sum()))
                break
    image = np.clip(_lighting(rng, image), 0, 255).round().astype(np.uint8)
    return _sample(image, owner, labels)


def _sample(image: np.ndarray, owner: np.ndarray, labels: list[int]) -> DemoSample:
    """Masks and boxes from the owner map (int16[H, W], object index or -1)."""
    masks = owner[None] == np.arange(len(labels), dtype=owner.dtype)[:, None, None]
    boxes = [_mask_box(m) for m in masks]
    xyxy = np.array([(x0, y0, x1 + 1, y1 + 1) for x0, y0, x1, y1 in boxes], np.float32)
    return DemoSample(image, xyxy.reshape(-1, 4), np.array(labels, np.int64), masks)


# ---------------------------------------------------------------------------- writing


def image_name(split: str, index: int) -> str:
    """File stem of image ``index`` (0-based) of ``split``, ILSVRC style."""
    return f"demo_{split}_{index + 1:08d}"


def annotation_xml(split: str, name: str, width: int, height: int, sample: DemoSample) -> str:
    """The devkit's XML of a demo image (see :func:`xml_text`)."""
    wnids = [DEMO_CLASSES.wnids[label - 1] for label in sample.labels]
    return xml_text(split, name, width, height, sample.boxes, wnids)


def xml_text(
    folder: str, name: str, width: int, height: int, boxes: np.ndarray, wnids: list[str]
) -> str:
    """The devkit's XML: ``<bndbox>`` children xmin, xmax, ymin, ymax, inclusive 0-based
    (``boxes``: internal xyxy, one wnid each)."""
    lines = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{name}</filename>",
        "\t<source>",
        f"\t\t<database>inception-rcnn demo v{GENERATOR_VERSION}</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t</size>",
    ]
    for (x1, y1, x2, y2), wnid in zip(np.asarray(boxes).astype(int), wnids, strict=True):
        lines += [
            "\t<object>",
            f"\t\t<name>{wnid}</name>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x1}</xmin>",
            f"\t\t\t<xmax>{x2 - 1}</xmax>",
            f"\t\t\t<ymin>{y1}</ymin>",
            f"\t\t\t<ymax>{y2 - 1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    return "\n".join([*lines, "</annotation>", ""])


def write_split(root: Path, split: str, count: int, seed: int) -> None:
    """Render and write ``count`` images of ``split`` with their XML and image list."""
    data = root / "Data" / "DET" / split
    ann = root / "Annotations" / "DET" / split
    sets = root / "ImageSets" / "DET"
    for folder in (data, ann, sets):
        folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        sample = render_sample(seed, split, i)
        name = image_name(split, i)
        h, w = sample.image.shape[:2]
        Image.fromarray(sample.image).save(data / f"{name}.JPEG", "JPEG", quality=JPEG_QUALITY)
        (ann / f"{name}.xml").write_text(annotation_xml(split, name, w, h, sample))
        names.append(f"{name} {i + 1}\n")
    (sets / f"{split}.txt").write_text("".join(names))


def write_map_det(root: Path) -> None:
    """``<wnid> <id> <name>`` per class, as the devkit's ``map_det.txt``."""
    pairs = zip(DEMO_CLASSES.wnids, DEMO_CLASSES.names, strict=True)
    (root / "map_det.txt").write_text(
        "".join(f"{w} {i} {n}\n" for i, (w, n) in enumerate(pairs, 1))
    )


def settings(num_train: int, num_val: int, seed: int) -> dict:
    """What the marker records; a tree is reused only when this matches exactly."""
    return {
        "generator": "inception-rcnn demo",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "classes": [
            f"{w} {n}" for w, n in zip(DEMO_CLASSES.wnids, DEMO_CLASSES.names, strict=True)
        ],
        "jpeg_quality": JPEG_QUALITY,
    }


def write_dataset(root: str | Path, *, num_train: int, num_val: int, seed: int) -> None:
    """Write the whole tree into ``root`` (no atomicity: see :func:`ensure_demo_dataset`)."""
    root = Path(root)
    write_map_det(root)
    write_split(root, "train", num_train, seed)
    write_split(root, "val", num_val, seed)
    marker = json.dumps(settings(num_train, num_val, seed), indent=2) + "\n"
    (root / MARKER).write_text(marker)  # last: its presence means the tree is complete


# ---------------------------------------------------------------------------- caching


def default_demo_dir() -> Path:
    """``<cache root>/demo/v<version>``; the root is ``detector.core.paths.cache_root()``."""
    return cache_root() / "demo" / f"v{GENERATOR_VERSION}"


def read_marker(root: Path) -> dict | None:
    """The settings a complete demo tree at ``root`` was made with; None if not one."""
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_demo_dataset(
    folder: str | Path | None = None,
    *,
    num_train: int = 240,
    num_val: int = 40,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Return the root of a complete demo tree, generating it first when needed.

    Args:
        folder: where the tree goes; None for ``$INCEPTION_RCNN_CACHE/demo/v<version>``
            (default ``~/.cache/inception-rcnn``).
        num_train, num_val: images per split.
        seed: the generator's seed.
        force: regenerate even when a matching tree exists.
    Nothing is written when the folder holds a tree made with the same settings. A folder
    holding a demo tree with other settings is replaced; any other non-empty folder is
    refused (ValueError), never deleted.
    """
    if min(num_train, num_val) < 0:
        raise ValueError(f"demo dataset: image counts must be >= 0, got {num_train}, {num_val}")
    root = expand(str(folder)) if folder else default_demo_dir()
    wanted = settings(num_train, num_val, seed)
    if not force and read_marker(root) == wanted:
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not secret
    try:
        write_dataset(tmp, num_train=num_train, num_val=num_val, seed=seed)
        _move_into_place(tmp, root, wanted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_replaceable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and read_marker(root) is None:
        raise ValueError(f"{root}: folder is not empty and holds no demo dataset; not overwriting")


def _move_into_place(tmp: Path, root: Path, wanted: dict) -> None:
    """Rename ``tmp`` to ``root``; an older demo tree there is swapped out, then deleted.

    When another process finished the same tree first, its copy is kept.
    """
    old = None
    if root.is_dir() and read_marker(root) is not None:
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
    try:
        os.replace(tmp, root)  # atomic; replaces only an empty folder
    except OSError:
        if read_marker(root) != wanted:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- CLI


def draw_preview(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Image.Image:
    """The image with its boxes (internal xyxy) and class names drawn, for eyeballing."""
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    colours = ["#ff3030", "#30ff30", "#3080ff", "#ffff30", "#ff30ff", "#30ffff"]
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        colour = colours[(label - 1) % len(colours)]
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=2)
        draw.text((x1 + 3, y1 + 2), DEMO_CLASSES.name_of(int(label)), fill=colour)
    return pil


def write_previews(root: Path, out: Path, split: str, count: int) -> list[Path]:
    """Draw the boxes read back by :class:`IlsvrcDet` on the first ``count`` images."""
    from detector.datasets.ilsvrc import IlsvrcDet

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in list(IlsvrcDet(root, split))[:count]:
        image = load_image(rec.path)
        path = out / f"{rec.image_id}.png"
        draw_preview(image, rec.boxes, rec.labels).save(path)
        paths.append(path)
    return paths


def get_args_parser() -> argparse.ArgumentParser:
    from detector.core.config import add_config_args

    parser = argparse.ArgumentParser(
        description="Generate the embedded demo dataset in the ILSVRC DET layout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:")[1],
    )
    parser.add_argument(
        "--out",
        default=None,
        help="dataset root (default: data.demo_dir of the config, else the cache folder)",
    )
    parser.add_argument("--train", type=int, default=240, help="training images (default 240)")
    parser.add_argument("--val", type=int, default=40, help="validation images (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument(
        "--preview", default=None, help="also draw the boxes of the first val images here (PNG)"
    )
    parser.add_argument(
        "--preview-count", type=int, default=8, help="how many previews (default 8)"
    )
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from detector.core.config import parse_args

    args = parse_args(get_args_parser(), argv)
    try:
        target = args.out
        if target is None:
            from detector.core.config import load_config

            target = load_config(args.config, args.overrides)
        start = time.perf_counter()
        root = ensure_demo_dataset(
            target, num_train=args.train, num_val=args.val, seed=args.seed, force=args.force
        )
        seconds = time.perf_counter() - start
        if args.preview:
            write_previews(root, Path(args.preview), "val", args.preview_count)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"demo dataset: {root} ({args.train} train, {args.val} val, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
