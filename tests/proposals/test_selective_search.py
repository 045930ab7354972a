"""Selective search on real photographs and on synthetic images with known answers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from skimage import data

from detector.core.config import SelectiveSearchConfig
from proposals.selective_search import (
    DOUBLED,
    RCNN_FAST,
    _filter_and_map,
    _resized_size,
    canonical_boxes,
    selective_search,
    settings_from_config,
)

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(data, name)() for name in PHOTOS}


@pytest.fixture(scope="module")
def doubled(photos) -> dict[str, np.ndarray]:
    return {name: selective_search(im, **DOUBLED) for name, im in photos.items()}


@pytest.fixture(scope="module")
def rcnn_fast(photos) -> dict[str, np.ndarray]:
    return {name: selective_search(im, **RCNN_FAST) for name, im in photos.items()}


def two_squares() -> np.ndarray:
    """500x250 grey image (no resize at width 500) with a red and a blue rectangle."""
    im = np.full((250, 500, 3), 128, np.uint8)
    im[50:150, 100:200] = (255, 0, 0)
    im[120:220, 300:450] = (0, 0, 255)
    return im


def test_default_is_doubled_preset(photos, doubled):
    assert np.array_equal(selective_search(photos["coffee"]), doubled["coffee"])


def test_counts_in_sane_range(doubled, rcnn_fast):
    for name in PHOTOS:
        assert 100 <= len(doubled[name]) <= 5000, name
        assert 300 <= len(rcnn_fast[name]) <= 8000, name


def test_doubled_gives_about_half_of_rcnn_fast(doubled, rcnn_fast):
    ratio = sum(map(len, doubled.values())) / sum(map(len, rcnn_fast.values()))
    assert 0.3 <= ratio <= 0.7, ratio


def test_boxes_inside_image_with_min_side(photos, doubled, rcnn_fast):
    for result in (doubled, rcnn_fast):
        for name, boxes in result.items():
            h, w = photos[name].shape[:2]
            assert boxes.dtype == np.float32 and boxes.shape[1] == 4
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all()
            assert (boxes[:, 3] <= h).all()
            scale_x, scale_y = w / 500, h / round(h * 500 / w)
            eps = 1e-3
            assert (boxes[:, 2] - boxes[:, 0] >= 20 * scale_x - eps).all(), name
            assert (boxes[:, 3] - boxes[:, 1] >= 20 * scale_y - eps).all(), name


def test_canonical_unique_and_sorted(doubled):
    for boxes in doubled.values():
        assert len(np.unique(boxes, axis=0)) == len(boxes)
        order = np.lexsort(boxes.T[::-1])  # primary key x1, then y1, x2, y2
        assert np.array_equal(order, np.arange(len(boxes)))


def test_deterministic_set(photos, doubled):
    again = selective_search(photos["astronaut"], **DOUBLED)
    assert np.array_equal(again, doubled["astronaut"])


def test_known_objects_found():
    boxes = selective_search(two_squares())
    found = {tuple(b) for b in boxes.tolist()}
    assert {(0, 0, 500, 250), (100, 50, 200, 150), (300, 120, 450, 220)} <= found
    # Everything else is a slightly blurred copy of one of these three regions.
    refs = np.array([[0, 0, 500, 250], [100, 50, 200, 150], [300, 120, 450, 220]], np.float32)
    nearest = np.abs(boxes[:, None, :] - refs[None]).max(axis=2).min(axis=1)
    assert (nearest <= 5).all()


def test_boxes_map_back_to_original_pixels():
    # Twice the size, edges on even pixels: the linear 2x downscale is exact, so every box
    # must come back exactly doubled.
    small = two_squares()
    large = small.repeat(2, axis=0).repeat(2, axis=1)
    assert np.array_equal(selective_search(large), selective_search(small) * 2)


def test_uniform_image_is_one_box():
    boxes = selective_search(np.full((200, 400, 3), 90, np.uint8))
    assert boxes.tolist() == [[0, 0, 400, 200]]


def test_gray_and_rgba_match_rgb():
    rgb = two_squares()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert np.array_equal(selective_search(rgba), selective_search(rgb))
    gray = rgb[:, :, 1]
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(selective_search(gray), selective_search(gray3))
    assert len(selective_search(gray)) >= 1


def test_empty_and_tiny_images():
    assert selective_search(np.zeros((0, 0, 3), np.uint8)).shape == (0, 4)
    assert selective_search(np.zeros((0, 7), np.uint8)).shape == (0, 4)
    # 1000x10 resizes to 500x5: no box can have a 20-pixel side.
    assert selective_search(np.zeros((10, 1000, 3), np.uint8)).shape == (0, 4)
    # A 2x2 image is upscaled to 500x500 (R-CNN resizes regardless): the whole image.
    assert selective_search(np.zeros((2, 2), np.uint8)).tolist() == [[0, 0, 2, 2]]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        selective_search(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        selective_search(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ValueError, match="colour space"):
        selective_search(two_squares(), color_spaces=("xyz",))
    with pytest.raises(ValueError, match="strategy"):
        selective_search(two_squares(), strategies=("color+shape",))
    with pytest.raises(ValueError, match="max_side"):
        selective_search(two_squares(), max_side=0)


def test_resized_long_side_is_capped_width_rule_kept_otherwise():
    assert _resized_size(500, 375, 500, 5000) == (500, 375)
    assert _resized_size(375, 500, 500, 5000) == (500, 667)
    assert _resized_size(20, 10000, 224, 5000) == (10, 5000)  # not 224x112000
    assert _resized_size(10000, 20, 224, 150) == (150, 1)  # a wide strip's width too
    assert _resized_size(100, 4000, 224, 1000) == (25, 1000)


def test_tall_strip_is_searched_not_refused():
    """A 20x10000 strip (0.2 MP) once failed: "resized to width 224 is 224x112000"."""
    strip = np.zeros((10000, 20, 3), np.uint8)
    assert selective_search(strip, resize_width=224).shape == (0, 4)  # 10 px wide: no box
    strip = np.full((4000, 100, 3), 90, np.uint8)
    strip[1000:2000, 20:80] = (250, 30, 30)
    boxes = selective_search(strip, resize_width=224, max_side=1000, min_side=10)
    assert len(boxes) > 0
    assert (boxes[:, 2] <= 100).all() and (boxes[:, 3] <= 4000).all()
    assert [0, 1000, 100, 2000] in boxes.round().tolist() or any(
        abs(b[1] - 1000) <= 40 and abs(b[3] - 2000) <= 40 for b in boxes.tolist()
    )


def test_filter_and_map_hand_computed():
    # Resized 500x250 of a 1000x500 original: scale 2 on both axes.
    rects = np.array([[0, 0, 20, 30], [10, 10, 19, 40], [480, 240, 20, 10], [490, 200, 10, 50]])
    boxes = _filter_and_map(rects, 20, 1000, 500, 500, 250)
    assert boxes.tolist() == [[0, 0, 40, 60]]
    boxes = _filter_and_map(rects, 10, 1000, 500, 500, 250)
    assert boxes.tolist() == [
        [0, 0, 40, 60],
        [20, 20, 58, 100],
        [960, 480, 1000, 500],
        [980, 400, 1000, 500],
    ]
    assert _filter_and_map(np.zeros((0, 4), int), 20, 10, 10, 500, 500).shape == (0, 4)


def test_canonical_boxes_hand_computed():
    boxes = np.array([[5, 1, 9, 9], [1, 2, 3, 4], [5, 1, 9, 9], [1, 2, 3, 3]], np.float32)
    assert canonical_boxes(boxes).tolist() == [[1, 2, 3, 3], [1, 2, 3, 4], [5, 1, 9, 9]]
    assert canonical_boxes(np.zeros((0, 4))).shape == (0, 4)


def test_config_defaults_match_function_defaults():
    settings = settings_from_config(SelectiveSearchConfig())
    defaults = {
        name: p.default
        for name, p in inspect.signature(selective_search).parameters.items()
        if name != "image"
    }
    assert settings.keys() == defaults.keys()
    for name, value in settings.items():
        want = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
        assert value == want, name
