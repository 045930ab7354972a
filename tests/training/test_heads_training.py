"""Fitting R-CNN's heads: region selection, SVM hard-negative mining, and a tiny end-to-end
run in which box regression tightens the detections.

The end-to-end data is the rectangle tree of ``test_classifier_training`` (48 px noise
images, one red or blue rectangle each, real selective search); member 0 is a real
GoogLeNet at 32 px trained for a few dozen steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.boxes import box_iou
from detector.core.config import load_config
from detector.core.structures import ImageRecord
from detector.datasets import open_split, with_images
from detector.detector import Detector
from detector.heads import load_heads
from detector.resolve import TRAIN_MEMBERS, resolve_config
from detector.train import main
from detector.training.classifier import train_member
from detector.training.heads import fit_svm, select_regions
from tests.training.test_classifier_training import tiny_overrides, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_select_regions_keeps_truths_close_proposals_and_some_negatives():
    truths = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    rec = ImageRecord("x", 1, None, 80, 80, boxes=truths, labels=np.array([2, 1]))
    close = [[0, 0, 10, 11], [20, 20, 40, 38]]  # IoU 0.91, 0.9
    far = [[50, 50, 60, 60 + i] for i in range(10)]  # IoU 0
    sel = select_regions(
        rec, np.array(close + far, np.float32), 3, np.random.default_rng(0),
        bbox_iou=0.6, negatives_per_image=4,
    )  # fmt: skip
    assert sel["is_gt"].tolist() == [True, True] + [False] * 6  # 2 truths, 2 close, 4 of 10 far
    np.testing.assert_array_equal(sel["boxes"][2:4], close)
    assert sel["gt_labels"][:4].tolist() == [2, 1, 2, 1]
    np.testing.assert_array_equal(sel["gt_boxes"][2:4], rec.boxes)
    assert sel["best_iou"][2] == pytest.approx(10 / 11) and (sel["best_iou"][4:] == 0).all()
    # per class: the close proposal of class 2 overlaps class 2 only; class 3 has no object
    assert sel["class_iou"][2].tolist() == pytest.approx([0, 10 / 11, 0])


def test_hard_negative_mining_ranks_held_out_positives_above_negatives():
    """Positives differ from most negatives along one direction and from a few hard ones only
    along another. The first round sees random (easy) negatives and misses the second
    direction; mining finds the hard ones and the SVM ranks held-out data correctly."""
    rng = np.random.default_rng(0)
    d = 16

    def sample(n_pos: int, n_easy: int, n_hard: int):
        pos = rng.normal(0, 0.3, (n_pos, d)) + np.r_[2.0, 2.0, np.zeros(d - 2)]
        easy = rng.normal(0, 0.3, (n_easy, d)) + np.r_[-2.0, 2.0, np.zeros(d - 2)]
        hard = rng.normal(0, 0.3, (n_hard, d)) + np.r_[3.0, -2.0, np.zeros(d - 2)]
        return pos, easy, hard

    pos, easy, hard = sample(40, 1900, 100)
    pool = np.concatenate([easy, hard])
    first = np.arange(0, 1900, 100)  # 19 easy negatives only
    settings = {"c": 0.1, "pos_weight": 2.0, "seed": 0}
    w0, b0, used0 = fit_svm(pos, pool, first, rounds=0, **settings)
    w, b, used = fit_svm(pos, pool, first, rounds=3, **settings)
    np.testing.assert_array_equal(w, fit_svm(pos, pool, first, rounds=3, **settings)[0])
    assert used0 == 19 and used > 19 + 50  # the hard negatives joined
    test_pos, test_easy, test_hard = sample(200, 200, 200)

    def worst_case(w, b):  # fraction of (positive, negative) pairs ranked the right way
        s_pos = test_pos @ w + b
        s_neg = np.concatenate([test_easy, test_hard]) @ w + b
        return float((s_pos[:, None] > s_neg[None, :]).mean())

    assert worst_case(w, b) > 0.99
    assert worst_case(w0, b0) < 0.8  # without mining the hard negatives outrank positives


def mean_top_iou(detector: Detector, records: list[ImageRecord]) -> float:
    """For each ground truth, the IoU of the best-scoring detection of its class."""
    ious = []
    for rec in records:
        det = detector(str(rec.path))
        for box, label in zip(rec.boxes, rec.labels, strict=True):
            mine = det.boxes[det.labels == label]
            if len(mine):
                ious.append(float(box_iou(mine[:1], box[None])[0, 0]))
    assert len(ious) >= 0.8 * len(records)
    return float(np.mean(ious))


def test_box_regression_raises_the_iou_of_the_detections(tmp_path):
    write_dataset(tmp_path / "data", {"train": 24, "val": 8})
    base = tiny_overrides(tmp_path, "train.batch_size=32")
    cfg = resolve_config(load_config(None, base), needs=TRAIN_MEMBERS)
    train_member(cfg, 0, tmp_path / "models", max_steps=40)
    models = [f"model.checkpoint_dir={tmp_path / 'models'}", "model.members=1"]
    common = [*base, *models, "inference.precision=fp32", "heads.bbox_alpha=10"]
    assert main(["--heads", *common]) == 0
    heads = load_heads(tmp_path / "models" / "heads.safetensors")
    assert np.abs(heads.bbox_weight).sum() > 0 and np.abs(heads.svm_weight).sum() > 0

    records = with_images(open_split(resolve_config(load_config(None, common)).data, "val")[0])
    plain = Detector.from_config(resolve_config(load_config(None, common)))
    refined = Detector.from_config(
        resolve_config(load_config(None, [*common, "inference.box_regression=true"]))
    )
    before, after = mean_top_iou(plain, records), mean_top_iou(refined, records)
    assert after > before + 0.03, (before, after)


def test_heads_settings_leave_the_members_alone():
    """Heads train after the members: their settings neither restart a member's resume nor
    rebuild the demo's models."""
    from detector.demo import build_key
    from detector.training.classifier import resume_key

    a = load_config("demo")
    b = load_config("demo", ["heads.bbox_alpha=10", "heads.svm_rounds=1"])
    assert resume_key(a) == resume_key(b) and build_key(a) == build_key(b)
    assert resume_key(a) != resume_key(load_config("demo", ["train.lr=0.5"]))
