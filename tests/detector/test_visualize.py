"""Drawings: a score threshold, labels inside the image and never on top of each other,
one colour per class."""

from __future__ import annotations

import itertools

import numpy as np
from skimage import data

from detector.core.config import InferenceConfig, load_config
from detector.core.structures import Detections
from detector.visualize import (
    class_color,
    draw_detections,
    font_size,
    layout_labels,
    selected,
)


def crowded(n: int = 12, seed: int = 0) -> Detections:
    """Boxes piled up near the top edge (labels would run off it and onto each other)."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, 60, n)
    y1 = rng.uniform(0, 8, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(40, 120, n), y1 + rng.uniform(40, 90, n)], 1)
    labels = rng.integers(1, 4, n)
    return Detections(
        boxes=boxes.astype(np.float32),
        scores=np.linspace(0.95, 0.5, n).astype(np.float32),
        labels=labels,
        class_names=[["cat", "coffee cup", "astronaut"][int(k) - 1] for k in labels],
    )


def test_labels_stay_inside_the_image_and_never_overlap():
    w, h = 200, 160
    det = crowded()
    order = selected(det, top=0, min_score=0.0)
    boxes = [tuple(int(v) for v in det.boxes[i]) for i in order]
    size = font_size(w, h)
    sizes = [(7 * len(det.class_names[i]) + 30, size) for i in order]
    rects = layout_labels(boxes, sizes, w, h)
    placed = [r for r in rects if r is not None]
    assert len(placed) == len(rects)  # room for all of them here
    for x1, y1, x2, y2 in placed:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    for a, b in itertools.combinations(placed, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # The best box's label sits at its top-left corner, pushed down to the image's top edge
    # (above the box it does not fit: y1 < 8).
    assert rects[0][0] == boxes[0][0] and rects[0][1] == 0


def test_label_above_the_box_when_there_is_room():
    (rect,) = layout_labels([(50, 80, 150, 150)], [(40, 12)], 200, 200)
    assert rect == (50, 80 - 16, 50 + 44, 80)  # text + 2 px padding, resting on the box
    (rect,) = layout_labels([(180, 80, 199, 150)], [(40, 12)], 200, 200)
    assert rect[2] == 200  # moved left to stay inside


def test_threshold_top_and_class_colours():
    det = crowded()
    assert selected(det, top=0, min_score=0.9) == [0, 1]
    assert selected(det, top=3, min_score=0.0) == [0, 1, 2]
    image = np.ascontiguousarray(data.astronaut()[:160, :200])
    np.testing.assert_array_equal(draw_detections(image, det, min_score=0.99), image)
    drawn = draw_detections(image, det, min_score=0.5)
    assert drawn.shape == image.shape and (drawn != image).any()
    # Each class keeps its colour: the outline of a lone box is drawn in it.
    lone = Detections(
        boxes=np.array([[100, 100, 150, 140]], np.float32),
        scores=np.array([0.9], np.float32),
        labels=np.array([2]),
        class_names=["dog"],
    )
    out = draw_detections(np.zeros((160, 200, 3), np.uint8), lone)
    assert tuple(out[139, 120]) == class_color(2)
    assert len({class_color(k) for k in range(1, 201)}) == 200


def test_vis_threshold_is_a_config_key_and_a_flag():
    assert InferenceConfig.vis_threshold == 0.5
    assert load_config(None, ["inference.vis_threshold=0.8"]).inference.vis_threshold == 0.8
    from detector.run import get_args_parser

    assert (
        get_args_parser().parse_args(["--images", "x", "--vis-threshold", "0.3"]).vis_threshold
        == 0.3
    )
