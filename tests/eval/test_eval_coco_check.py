"""Our devkit AP against pycocotools where the two should agree (large boxes, distinct scores)."""

from __future__ import annotations

import numpy as np

from detector.core.structures import ImageRecord, from_inclusive
from eval.coco_check import coco_ap50
from eval.ilsvrc_ap import evaluate
from eval.submission import SubmissionArrays


def random_large_case(seed: int, n_images: int = 30, k: int = 3):
    """Objects >= 40 px (threshold 0.5 for all), detections jittered about them, distinct scores."""
    rng = np.random.default_rng(seed)
    gt, rows = [], []
    for i in range(1, n_images + 1):
        n = int(rng.integers(0, 4))
        xy = rng.integers(0, 200, (n, 2))
        boxes = np.hstack([xy, xy + rng.integers(40, 150, (n, 2))]).astype(np.float64)
        labels = rng.integers(1, k + 1, n)
        gt.append(ImageRecord(f"im{i}", i, None, 400, 400, from_inclusive(boxes), labels))
        for b, lab in zip(boxes, labels, strict=True):
            for _ in range(int(rng.integers(1, 4))):
                c = lab if rng.random() < 0.8 else rng.integers(1, k + 1)
                rows.append((i, c, *(b + rng.normal(0, 8, 4))))
        for _ in range(int(rng.integers(0, 3))):  # background clutter
            xy = rng.integers(0, 250, 2)
            rows.append((i, rng.integers(1, k + 1), *xy, *(xy + rng.integers(40, 150, 2))))
    rows = np.array(rows, dtype=np.float64)
    score = rng.permutation(len(rows)) / len(rows) + 1e-3  # distinct
    return gt, SubmissionArrays(rows[:, 0], rows[:, 1], score, rows[:, 2:])


def test_per_class_ap_close_to_pycocotools():
    for seed in range(3):
        gt, dets = random_large_case(seed)
        ours = evaluate(gt, dets, 3)
        coco = coco_ap50(gt, dets, 3)
        assert (ours.npos > 0).all()
        assert 0.2 < ours.mAP < 0.95  # a non-trivial ranking
        np.testing.assert_allclose(coco.ap, ours.ap, atol=0.02)


def test_blacklist_removed_from_both_sides():
    gt, dets = random_large_case(5)
    pairs = {(1, 1), (2, 2), (3, 3), (4, 1)}
    ours = evaluate(gt, dets, 3, blacklist=pairs)
    np.testing.assert_allclose(coco_ap50(gt, dets, 3, blacklist=pairs).ap, ours.ap, atol=0.02)


def test_empty_inputs():
    gt = [ImageRecord("a", 1, None, 10, 10, from_inclusive([[0, 0, 5, 5]]), [2])]
    check = coco_ap50(gt, SubmissionArrays(), 3)
    assert np.isnan(check.ap[0]) and check.ap[1] == 0.0 and check.mAP == 0.0
    assert coco_ap50([], SubmissionArrays(), 2).mAP == 0.0


def test_faster_coco_eval_gives_the_figures_of_pycocotools():
    import pytest

    from eval.coco_check import available_backends

    if "faster-coco-eval" not in available_backends():
        pytest.skip("faster-coco-eval (the optional extra inception-rcnn[fast]) not installed")
    for seed in range(3):
        gt, dets = random_large_case(seed)
        fast = coco_ap50(gt, dets, 3, blacklist={(1, 1)}, backend="faster-coco-eval")
        slow = coco_ap50(gt, dets, 3, blacklist={(1, 1)}, backend="pycocotools")
        assert (fast.backend, slow.backend) == ("faster-coco-eval", "pycocotools")
        np.testing.assert_allclose(fast.ap, slow.ap, rtol=0, atol=1e-12)
        assert fast.mAP == slow.mAP


def test_the_preferred_backend_is_the_first_installed(monkeypatch):
    import eval.coco_check as cc

    gt, dets = random_large_case(1)
    monkeypatch.setattr(cc, "available_backends", lambda: ["pycocotools"])
    assert coco_ap50(gt, dets, 3).backend == "pycocotools"
