"""R-CNN's heads at inference: box-regression targets, the heads file, features, and the
detector applying them (regression before NMS, SVM scores in place of the softmax)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.build import ModelSetupError, detector_parts
from detector.core.box_targets import apply_box_targets, box_targets, clip_to_image
from detector.core.checkpoints import CheckpointError
from detector.core.digests import file_sha256
from detector.core.structures import ClassList, Proposals
from detector.detector import Detector
from detector.ensemble import Ensemble
from detector.heads import Heads, load_heads, save_heads
from detector.nms import per_class_nms
from detector.outputs import header_mismatch, log_header, model_digests
from detector.resolve import ResolveError, resolve_config
from tests.conftest import CLASSES, TINY_WARP, fast_config

D = 1024  # torchvision GoogLeNet's pooled features


def make_heads(
    sha: str, *, bbox_bias=(0.0, 0.0, 0.0, 0.0), svm_bias=(0.0, 0.0, 0.0), classes=CLASSES
) -> Heads:
    k = len(classes)
    return Heads(
        classes=classes,
        feature_scale=1.0,
        svm_weight=np.zeros((k, D), np.float32),
        svm_bias=np.asarray(svm_bias, np.float32),
        bbox_weight=np.zeros((k, 4, D), np.float32),
        bbox_bias=np.tile(np.asarray(bbox_bias, np.float32), (k, 1)),
        member_sha256=sha,
    )


# ---- targets -----------------------------------------------------------------------------


def test_targets_and_inverse_on_hand_computed_boxes():
    # P: centre (20, 40), size 20 x 40; G: centre (35, 50), size 40 x 80.
    p = np.array([[10, 20, 30, 60]], np.float32)
    g = np.array([[15, 10, 55, 90]], np.float32)
    t = box_targets(p, g)
    np.testing.assert_allclose(t, [[0.75, 0.25, math.log(2), math.log(2)]], atol=1e-12)
    np.testing.assert_allclose(apply_box_targets(p, t), g, atol=1e-9)
    np.testing.assert_allclose(box_targets(p, p), [[0, 0, 0, 0]], atol=1e-12)
    # Half the size about the same centre, and a shift of a whole width to the left.
    shrunk = apply_box_targets(p, [[0, 0, math.log(0.5), math.log(0.5)]])
    np.testing.assert_allclose(shrunk, [[15, 30, 25, 50]], atol=1e-9)
    np.testing.assert_allclose(apply_box_targets(p, [[-1, 0, 0, 0]]), [[-10, 20, 10, 60]])


def test_targets_round_trip_many_boxes_and_refuse_empty_ones():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (50, 2))
    p = np.concatenate([xy, xy + rng.uniform(5, 200, (50, 2))], 1)  # size ratios below the cap
    xy = rng.uniform(0, 300, (50, 2))
    g = np.concatenate([xy, xy + rng.uniform(5, 200, (50, 2))], 1)  # size ratios below the cap
    np.testing.assert_allclose(apply_box_targets(p, box_targets(p, g)), g, atol=1e-9)
    with pytest.raises(ValueError, match="positive width"):
        box_targets([[0, 0, 0, 5]], [[0, 0, 5, 5]])


def test_growth_is_capped_and_boxes_are_clipped_to_the_image():
    huge = apply_box_targets([[0, 0, 10, 10]], [[0, 0, 1e4, 1e4]])
    assert np.isfinite(huge).all() and huge[0, 2] - huge[0, 0] == pytest.approx(10 * 1000 / 16)
    clipped = clip_to_image([[-5, -5, 500, 500], [200, 200, 300, 300]], 100, 120)
    np.testing.assert_array_equal(clipped, [[0, 0, 120, 100], [119, 99, 120, 100]])


# ---- the heads file ----------------------------------------------------------------------


def test_heads_file_round_trip_and_refusals(tmp_path):
    heads = make_heads("a" * 64, bbox_bias=(0.1, -0.2, 0.3, 0.0), svm_bias=(1, 2, 3))
    path = save_heads(tmp_path / "heads.safetensors", heads, note="test")
    back = load_heads(path, member_sha256="a" * 64, classes=CLASSES)
    for name in ("svm_weight", "svm_bias", "bbox_weight", "bbox_bias"):
        np.testing.assert_array_equal(getattr(back, name), getattr(heads, name))
    assert back.classes == CLASSES and back.feature_dim == D
    with pytest.raises(CheckpointError, match=r"another member 0.*detector.train --heads"):
        load_heads(path, member_sha256="b" * 64)
    with pytest.raises(CheckpointError, match="other classes"):
        load_heads(path, classes=ClassList(["x"], ["x"]))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'none.safetensors'}: .*not found"):
        load_heads(tmp_path / "none.safetensors")


def test_a_member_checkpoint_is_not_a_heads_file(random_members):
    with pytest.raises(CheckpointError, match="not a heads file"):
        load_heads(random_members / "member_0.safetensors")


# ---- features and NMS on refined boxes --------------------------------------------------


def test_features_are_the_input_of_fc_and_come_with_the_scores(random_members):
    from detector.classifier import load_members

    torch.set_num_threads(1)
    members, _ = load_members(sorted(random_members.glob("member_*.safetensors")))
    ens = Ensemble(
        members,
        warp=TINY_WARP,
        device="cpu",
        precision="fp32",
        chunk_size=7,
        compile=False,
        cascade_threshold=0.0,
        backend="torch",
    )
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    boxes = np.array([[0, 0, 40, 30], [10, 5, 70, 55], [30, 20, 80, 60]] * 5, np.float32)
    probs, feats = ens.score_and_features(ens.regions(image, boxes))
    np.testing.assert_allclose(probs, ens.score(ens.regions(image, boxes)), atol=1e-6)
    crops = ens.regions(image, boxes)
    with torch.inference_mode():
        x = torch.cat(list(crops)).contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(feats, members[0].features(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(members[0].fc(members[0].features(x)), members[0](x), atol=1e-5)
    assert feats.shape == (15, D) and np.abs(feats).sum() > 0


def test_per_class_nms_suppresses_among_each_class_own_boxes():
    # Class 1's boxes overlap (IoU 1/3 > 0.3): one goes; class 2's do not: both stay.
    a, b = [0, 0, 20, 20], [10, 0, 30, 20]
    per_class = np.array([[a, a, [0, 0, 10, 10]], [b, b, [20, 0, 30, 10]]], np.float32)
    probs = np.array([[0, 0.9, 0.8], [0, 0.7, 0.6]], np.float32)
    settings = {"nms_iou": 0.3, "score_threshold": 0.0, "max_per_class": 0, "max_detections": 0}
    boxes, scores, labels = per_class_nms(per_class, probs, **settings)
    assert labels.tolist() == [1, 2, 2] and scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    np.testing.assert_array_equal(boxes, [a, [0, 0, 10, 10], [20, 0, 30, 10]])


class FixedProposer:
    """Two proposals that overlap at IoU 1/3 (NMS at 0.3 keeps one of them per class)."""

    boxes = np.array([[0, 0, 40, 40], [20, 0, 60, 40]], np.float32)

    def __call__(self, image: np.ndarray) -> Proposals:
        return Proposals(self.boxes, np.full(2, np.nan), np.zeros(2))


def tiny_detector(random_members, heads: Heads | None, *, box_regression: bool, scorer: str):
    cfg = fast_config(random_members, "inference.score_threshold=0.0")
    _, ensemble, classes, settings = detector_parts(cfg)
    settings.update(heads=heads, box_regression=box_regression, scorer_kind=scorer, dedup_iou=0.0)
    return Detector(FixedProposer(), ensemble, classes, **settings)


def top_scores(det) -> dict[int, float]:
    """The best score of each class (detections come by descending score)."""
    out: dict[int, float] = {}
    for label, score in zip(det.labels.tolist(), det.scores.tolist(), strict=True):
        out.setdefault(label, score)
    return out


def test_box_regression_runs_before_nms(random_members):
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), np.uint8)
    plain = tiny_detector(random_members, None, box_regression=False, scorer="softmax")(image)
    assert len(plain) == 3  # one box per class: the other is suppressed
    # Every class shrinks both boxes to half their size: they no longer overlap, both stay.
    half = make_heads("0" * 64, bbox_bias=(0, 0, math.log(0.5), math.log(0.5)))
    det = tiny_detector(random_members, half, box_regression=True, scorer="softmax")(image)
    assert len(det) == 6 and sorted(det.labels.tolist()) == [1, 1, 2, 2, 3, 3]
    assert {tuple(b) for b in det.boxes.tolist()} == {(10, 10, 30, 30), (30, 10, 50, 30)}
    assert "heads" in det.timings
    # The scores are still the softmax: the top box of each class scores as before.
    assert top_scores(det) == pytest.approx(top_scores(plain))


def test_svm_scores_replace_the_softmax(random_members):
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), np.uint8)
    svm = make_heads("0" * 64, svm_bias=(2.0, -1.0, 0.5))
    det = tiny_detector(random_members, svm, box_regression=False, scorer="svm")(image)
    expected = {
        1: 1 / (1 + math.exp(-2.0)),
        2: 1 / (1 + math.exp(1.0)),
        3: 1 / (1 + math.exp(-0.5)),
    }
    assert top_scores(det) == pytest.approx(expected) and len(det) == 3
    np.testing.assert_array_equal(det.boxes, FixedProposer.boxes[[0, 0, 0]])  # no regression


# ---- configuration: missing, mismatched, part of a run's identity -------------------------


def test_enabled_heads_missing_or_for_another_member_are_clear_errors(random_members, tmp_path):
    missing = tmp_path / "heads.safetensors"
    for override in ("inference.box_regression=true", "inference.scorer=svm"):
        cfg = fast_config(random_members, override, f"heads.checkpoint={missing}")
        with pytest.raises(ModelSetupError, match=rf"{missing}: heads file not found.*--heads"):
            detector_parts(cfg)
        with pytest.raises(ResolveError, match=rf"{missing}: heads file not found.*--heads"):
            resolve_config(cfg)
    save_heads(missing, make_heads("f" * 64))
    cfg = fast_config(random_members, "inference.scorer=svm", f"heads.checkpoint={missing}")
    with pytest.raises(ModelSetupError, match="another member 0"):
        detector_parts(cfg)
    with pytest.raises(ModelSetupError, match="inference.scorer must be one of softmax, svm"):
        detector_parts(fast_config(random_members, "inference.scorer=svn"))


def test_the_heads_file_is_part_of_a_run_identity(random_members, tmp_path):
    sha = file_sha256(random_members / "member_0.safetensors")
    path = save_heads(tmp_path / "h.safetensors", make_heads(sha))
    on = resolve_config(
        fast_config(random_members, "inference.box_regression=true", f"heads.checkpoint={path}")
    )
    off = resolve_config(fast_config(random_members))
    assert model_digests(on)["heads"] == file_sha256(path) and model_digests(off)["heads"] is None
    header = log_header("/x", "/x", {}, model_digests(on))
    assert header_mismatch(header, header) is None
    other = log_header("/x", "/x", {}, model_digests(off))
    assert "heads" in header_mismatch(header, other)
    Detector.from_config(on)  # heads fitted on this member 0 load


def test_default_heads_file_lies_beside_member_0(random_members):
    from detector.build import heads_path

    cfg = resolve_config(fast_config(random_members))
    assert heads_path(cfg) == Path(cfg.model.checkpoints[0]).parent / "heads.safetensors"


def test_no_proposals_give_no_boxes_and_no_scores():
    heads = make_heads("0" * 64)
    assert heads.refine(np.zeros((0, 4)), np.zeros((0, D)), (10, 10)).shape == (0, 4, 4)
    assert heads.scores(np.zeros((0, D))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"features \[N, 1024\]"):
        heads.scores(np.zeros((2, 7)))
