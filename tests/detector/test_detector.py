"""Detector end to end with real parts: tiny random-weight GoogLeNets saved as real
checkpoints, real selective search (MultiBox off), real warp, ensemble and NMS."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector.batch import scoring_leaves_cores_free
from detector.build import ModelSetupError
from detector.core.boxes import box_iou
from detector.core.clock import Clock
from detector.core.config import load_config
from detector.core.io import ImageLoadError
from detector.core.structures import Detections, Proposals
from detector.detector import Detector
from detector.nms import per_class_nms
from detector.resolve import Needs, ResolveError, resolve_config
from detector.warp import context_boxes
from tests.conftest import CLASSES, FAST, fast_config


@pytest.fixture(scope="module")
def models(random_members) -> Path:
    torch.set_num_threads(1)
    return random_members


@pytest.fixture(scope="module")
def detector(models) -> Detector:
    return Detector.from_config(fast_config(models))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(data.astronaut(), (160, 128)))


@pytest.fixture(scope="module")
def reference(detector, image) -> Detections:
    """The detections of ``image``, computed once for the tests that compare against them."""
    return detector(image)


def assert_same(a: Detections, b: Detections) -> None:
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names and a.num_proposals == b.num_proposals


def test_detections_are_the_paper_pipeline(detector, image, reference):
    d = reference
    assert isinstance(d, Detections) and len(d) > 0
    # The same steps by hand: proposals -> averaged softmax of the warped crops -> NMS.
    proposals = detector.proposer(image)
    probs = detector.scorer.score_image(image, proposals.boxes)
    boxes, scores, labels = per_class_nms(
        proposals.boxes, probs, nms_iou=0.3, score_threshold=0.2, max_per_class=100,
        max_detections=0,
    )  # fmt: skip
    np.testing.assert_array_equal(d.boxes, boxes)
    np.testing.assert_allclose(d.scores, scores, rtol=1e-5)
    np.testing.assert_array_equal(d.labels, labels)
    assert d.num_proposals == len(proposals) > 0
    assert d.image_size == (128, 160)
    assert d.class_names == [CLASSES.name_of(int(c)) for c in d.labels]
    assert set(d.labels) <= {1, 2, 3} and (d.scores > 0.2).all()
    assert (np.diff(d.scores) <= 0).all()
    assert (d.boxes[:, :2] >= 0).all() and (d.boxes[:, 2] <= 160).all()
    assert {"load", "propose", "warp", "score", "nms"} == set(d.timings)
    assert min(d.timings.values()) >= 0
    assert detector.scorer.warp.size == 32 and detector.scorer.warp.context_pad == 4  # checkpoints


def test_array_path_pil_and_list_agree(detector, image, reference, tmp_path):
    Image.fromarray(image).save(tmp_path / "a.png")  # lossless: the same pixels
    assert_same(detector(tmp_path / "a.png"), reference)
    many = detector([str(tmp_path / "a.png"), Image.fromarray(image)])
    assert isinstance(many, list) and len(many) == 2
    for d in many:
        assert_same(d, reference)
    assert detector([]) == []


def test_empty_input_no_proposals(detector):
    # Selective search resizes to width 100: this image becomes 100 x 2, too thin for a box.
    d = detector(np.full((4, 200, 3), 90, np.uint8))
    assert len(d) == 0 and d.num_proposals == 0 and d.image_size == (4, 200)
    assert d.boxes.shape == (0, 4) and d.labels.dtype == np.int64
    assert d.to_dict()["boxes"] == []


def test_bad_input_raises_with_path(detector, tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"bad\.jpg: not an image"):
        detector(tmp_path / "bad.jpg")


def test_detect_many_in_order_with_failures(detector, image, reference, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    items = [image, tmp_path / "empty.jpg", np.zeros((4, 200, 3), np.uint8), image]
    for pipeline in (True, False):
        results = list(detector.detect_many(items, workers=2, pipeline=pipeline))
        assert [r[0] is i for r, i in zip(results, items, strict=True)] == [True] * 4
        assert isinstance(results[1][1], ImageLoadError) and "empty file" in str(results[1][1])
        assert_same(results[0][1], reference)
        assert_same(results[3][1], reference)
        assert len(results[2][1]) == 0
        assert {"load", "propose", "score", "nms"} <= set(results[3][1].timings)
        assert ("wait" in results[3][1].timings) is pipeline
        assert list(detector.detect_many([], workers=2, pipeline=pipeline)) == []


def test_pipelines_only_when_scoring_leaves_cores_free(detector, monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr("detector.batch.available_cores", lambda: 2)
        assert scoring_leaves_cores_free(detector)
        monkeypatch.setattr("detector.batch.available_cores", lambda: 1)
        assert not scoring_leaves_cores_free(detector)
    finally:
        torch.set_num_threads(threads)


def test_detect_many_runs_selective_search_in_worker_processes(
    detector, image, reference, monkeypatch
):
    def not_here(*args, **kwargs):
        raise AssertionError("selective search ran in the main process")

    monkeypatch.setattr("proposals.generator.selective_search", not_here)
    results = list(detector.detect_many([image, image], workers=2, pipeline=True))
    for _, d in results:
        assert_same(d, reference)
    # processes=False keeps the search in this process's threads, where it now fails
    (_, failed), *_ = detector.detect_many([image], workers=1, processes=False, pipeline=True)
    assert isinstance(failed, AssertionError)


def test_concurrent_calls_match_sequential(detector, image, reference):
    expected = reference
    out: list = [None, None]

    def work(i: int) -> None:
        out[i] = detector(image)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in out:
        assert_same(d, expected)


def test_from_checkpoints_and_settings(models, image):
    paths = sorted(models.glob("member_*.safetensors"))
    config = fast_config(models, "inference.score_threshold=1.0", "data.max_pixels=10000")
    det = Detector.from_checkpoints(paths, config=config)
    assert det.nms_settings.score_threshold == 1.0 and det.proposer.multibox is None
    assert len(det(image[:48, :48])) == 0  # no probability exceeds 1
    with pytest.raises(ImageLoadError, match="too many pixels"):
        det(image)  # 160 x 128 > 10,000


def test_setup_errors_say_what_is_expected(models, tmp_path):
    with pytest.raises(ModelSetupError, match=r"expected 3 ensemble members .* found 2"):
        Detector.from_config(fast_config(models, "model.members=3"))
    with pytest.raises(ModelSetupError, match=r"checkpoint not found: .*nope\.safetensors"):
        Detector.from_config(
            fast_config(models, f"model.checkpoints=[{tmp_path}/nope.safetensors]")
        )
    with pytest.raises(ModelSetupError, match=r"resolve the config first"):
        Detector.from_config(load_config(None, FAST))  # the demo's paths are filled by resolve


def test_resolve_errors_say_what_is_missing_and_how_to_train(models, tmp_path, monkeypatch):
    missing_mb = fast_config(
        models,
        "proposals.multibox.enabled=true",
        f"proposals.multibox.checkpoint={tmp_path}/mb.safetensors",
    )
    with pytest.raises(ResolveError, match=r"mb\.safetensors: MultiBox checkpoint not found"):
        resolve_config(missing_mb, data_root=str(tmp_path))
    # The demo config looks in the demo models folder; unbuilt, the error says how to build.
    monkeypatch.setenv("INCEPTION_RCNN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ResolveError, match=r"python -m detector\.demo --build-only"):
        resolve_config(load_config(None, FAST), needs=Needs(data=False))


def test_int8_calibrates_on_the_first_image(models, image) -> None:
    det = Detector.from_config(fast_config(models, "inference.precision=int8"))
    assert det.scorer.needs_calibration
    probs = det.scorer.score(det.scorer.regions(image, det.proposer(image).boxes))
    assert not det.scorer.needs_calibration
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_int8_detect_many_calibrates_on_its_first_images(models, image, tmp_path, monkeypatch):
    det = Detector.from_config(
        fast_config(models, "inference.precision=int8", "inference.calibration_images=3")
    )
    assert det.calibration_images == 3
    seen: list[int] = []
    calibrate = det.scorer.calibrate

    def counting(crops):
        seen.append(len(crops))
        calibrate(crops)

    monkeypatch.setattr(det.scorer, "calibrate", counting)
    (tmp_path / "bad.jpg").write_bytes(b"")
    other = np.ascontiguousarray(image[:, ::-1])
    items = [tmp_path / "bad.jpg", image, other, image]
    results = list(det.detect_many(iter(items), workers=1, processes=False))
    assert [r[0] is i for r, i in zip(results, items, strict=True)] == [True] * 4  # no repeats
    assert isinstance(results[0][1], ImageLoadError)
    # one calibration, on both readable images of the first three (128 crops at most each)
    n_props = [len(det.proposer(im)) for im in (image, other)]
    assert seen == [sum(min(n, 128) for n in n_props)]
    assert not det.scorer.needs_calibration
    assert det.calibrate([image]) == 0  # calibrated already: nothing more happens


def test_duplicate_groups_by_hand():
    from detector.detector import duplicate_groups

    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 10]],
        np.float32,
    )
    assert duplicate_groups(boxes, 1.0).tolist() == [0, 0, 2, 3, 0]  # identical boxes only
    assert duplicate_groups(boxes, 0.85).tolist() == [0, 0, 0, 3, 0]  # IoU 0.9 joins too


def test_dedup_at_iou_1_equals_no_dedup_and_lower_scores_fewer_crops(models, image):
    plain = Detector.from_config(fast_config(models))
    exact = Detector.from_config(fast_config(models, "inference.dedup_iou=1.0"))
    assert_same(exact(image), plain(image))
    proposals = plain.proposer(image)
    doubled = Proposals(
        np.concatenate([proposals.boxes, proposals.boxes[:5]]),
        np.concatenate([proposals.scores, proposals.scores[:5]]),
        np.concatenate([proposals.source, proposals.source[:5]]),
    )
    scored, inverse = exact.representatives(doubled.boxes)
    assert len(scored) == len(proposals) and (scored[inverse[-5:]] == np.arange(5)).all()
    assert_same(exact.classify(image, doubled, Clock()), plain.classify(image, doubled, Clock()))
    near = Detector.from_config(fast_config(models, "inference.dedup_iou=0.7"))
    scored, inverse = near.representatives(proposals.boxes)
    assert 0 < len(scored) < len(proposals)
    warp = near.scorer.warp
    context = context_boxes(proposals.boxes, size=warp.size, context_pad=warp.context_pad)
    iou = box_iou(context, context[scored[inverse]]).diagonal()
    assert (iou >= 0.7).all()  # every proposal takes the scores of a crop this close to its own
