"""Per-class NMS on hand-made cases and against a plain greedy reference."""

from __future__ import annotations

import numpy as np

from detector.nms import per_class_nms

A = [0, 0, 10, 10]
B = [1, 1, 11, 11]  # IoU(A, B) = 81 / 119 = 0.68
C = [50, 50, 60, 60]

# The paper's settings (InferenceConfig's defaults); each test overrides what it checks.
PAPER = {"nms_iou": 0.3, "score_threshold": 0.01, "max_per_class": 100, "max_detections": 0}


def nms(boxes, probs, **settings):
    return per_class_nms(boxes, probs, **{**PAPER, **settings})


def _probs(rows: list[list[float]]) -> np.ndarray:
    p = np.array(rows, np.float32)
    return np.concatenate([1 - p.sum(1, keepdims=True), p], 1)  # background column first


def test_same_class_suppressed_other_class_survives() -> None:
    boxes = np.array([A, B, C], np.float32)
    probs = _probs([[0.9, 0.0], [0.2, 0.7], [0.0, 0.6]])  # B: class 1 0.2, class 2 0.7
    probs[1, 1] = 0.8  # B also scores 0.8 for class 1: suppressed by A (0.9)
    got_boxes, scores, labels = nms(boxes, probs, nms_iou=0.3, score_threshold=0.01)
    np.testing.assert_array_equal(got_boxes, [A, B, C])
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(labels, [1, 2, 2])
    assert got_boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64


def test_iou_threshold_is_strict_and_uses_plain_iou() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    probs = _probs([[0.9], [0.8]])
    assert len(nms(boxes, probs, nms_iou=0.5)[0]) == 2
    assert len(nms(boxes, probs, nms_iou=0.49)[0]) == 1


def test_threshold_and_caps() -> None:
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(5)], np.float32)  # disjoint
    probs = _probs([[s, s / 2] for s in (0.5, 0.4, 0.3, 0.2, 0.005)])
    _, scores, labels = nms(boxes, probs, score_threshold=0.01)
    np.testing.assert_allclose(scores, [0.5, 0.4, 0.3, 0.25, 0.2, 0.2, 0.15, 0.1], rtol=1e-6)
    # tie at 0.2 (box 3 class 1, box 1 class 2): the lower box index comes first
    np.testing.assert_array_equal(labels, [1, 1, 1, 2, 2, 1, 2, 2])
    _, scores, labels = nms(boxes, probs, max_per_class=2)
    np.testing.assert_allclose(scores, [0.5, 0.4, 0.25, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(labels, [1, 1, 2, 2])
    _, scores, _ = nms(boxes, probs, max_detections=3)
    np.testing.assert_allclose(scores, [0.5, 0.4, 0.3], rtol=1e-6)


def test_background_never_detected_and_empty_inputs() -> None:
    boxes = np.array([A], np.float32)
    b, s, lab = nms(boxes, np.array([[1.0, 0.0, 0.0]], np.float32))
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)
    b, s, lab = nms(np.zeros((0, 4), np.float32), np.zeros((0, 201), np.float32))
    assert b.shape == (0, 4) and s.dtype == np.float32 and lab.dtype == np.int64


def _greedy_reference(boxes, probs, iou_thr, thr):
    out = []
    for c in range(1, probs.shape[1]):
        idx = [i for i in np.argsort(-probs[:, c], kind="stable") if probs[i, c] > thr]
        kept: list[int] = []
        for i in idx:
            if all(_iou(boxes[i], boxes[k]) <= iou_thr for k in kept):
                kept.append(i)
        out += [(float(probs[i, c]), c, i) for i in kept]
    return sorted(out, key=lambda t: -t[0])


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_matches_greedy_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (60, 2))], 1).astype(np.float32)
    probs = rng.dirichlet(np.ones(6), 60).astype(np.float32)
    _, scores, labels = nms(boxes, probs, nms_iou=0.3, score_threshold=0.05, max_per_class=0)
    ref = _greedy_reference(boxes.astype(np.float64), probs, 0.3, 0.05)
    assert sorted(zip(scores.tolist(), labels.tolist(), strict=True)) == sorted(
        (s, c) for s, c, _ in ref
    )
    assert np.all(np.diff(scores) <= 0)
