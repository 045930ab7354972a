"""R-CNN region labelling and mini-batch sampling on small hand-computed cases."""

import numpy as np

from detector.training.sampling import (
    IGNORE,
    PoolBuilder,
    RegionPool,
    image_regions,
    label_proposals,
    max_ioa,
    sample_minibatch,
)

IOU = {"fg_iou": 0.5, "bg_iou": 0.5}  # the paper's thresholds (train.fg_iou / train.bg_iou)
BATCH = {"batch_size": 128, "fg_fraction": 0.25}  # 32 + 96 (train.batch_size / fg_fraction)


def test_label_proposals_hand_computed():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    gt_labels = np.array([3, 7])
    props = np.array(
        [
            [0, 0, 10, 5],  # IoU 50/100 = 0.5 exactly with gt 0 -> positive (inclusive)
            [0, 0, 10, 4],  # 0.4 -> background
            [20, 0, 30, 10],  # identical to gt 1 -> class 7
            [5, 0, 25, 10],  # 50 / (200 + 100 - 50) = 0.2 with each gt -> background
            [100, 100, 120, 120],  # no overlap
        ],
        np.float32,
    )
    labels, max_iou = label_proposals(props, gt, gt_labels, **IOU)
    np.testing.assert_array_equal(labels, [3, 0, 7, 0, 0])
    np.testing.assert_allclose(max_iou, [0.5, 0.4, 1.0, 0.2, 0.0], atol=1e-6)
    assert labels.dtype == np.int64 and max_iou.dtype == np.float32


def test_label_proposals_gap_is_ignored():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    props = np.array([[0, 0, 10, 4], [0, 0, 10, 2]], np.float32)  # IoU 0.4, 0.2
    labels, _ = label_proposals(props, gt, np.array([1]), fg_iou=0.5, bg_iou=0.3)
    np.testing.assert_array_equal(labels, [IGNORE, 0])


def test_label_proposals_empty_inputs():
    labels, iou = label_proposals(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), **IOU)
    assert labels.shape == (0,) and iou.shape == (0,)
    labels, iou = label_proposals(np.array([[0, 0, 5, 5]]), np.zeros((0, 4)), np.zeros(0), **IOU)
    np.testing.assert_array_equal(labels, [0])  # no ground truth: everything is background


def test_image_regions_adds_ground_truth_first():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    props = np.array([[0, 0, 10, 5], [50, 50, 60, 60]], np.float32)
    boxes, labels = image_regions(props, gt, np.array([2]), **IOU, background=True)
    np.testing.assert_array_equal(labels, [2, 2, 0])
    np.testing.assert_array_equal(boxes[0], gt[0])
    empty = np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0)
    boxes, labels = image_regions(*empty, **IOU, background=True)
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_an_incompletely_annotated_image_gives_positives_but_no_background():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    props = np.array([[0, 0, 10, 5], [50, 50, 60, 60], [70, 0, 90, 20]], np.float32)
    _, labels = image_regions(props, gt, np.array([2]), **IOU, background=False)
    np.testing.assert_array_equal(labels, [2, 2])  # the ground truth and the IoU-0.5 proposal


def test_background_mostly_inside_a_crowd_box_is_left_out():
    gt = np.array([[0, 0, 10, 10]], np.float32)
    crowd = np.array([[40, 40, 100, 100]], np.float32)
    # inside the crowd (IoA 1), half inside (IoA 0.5), a quarter inside, a positive inside
    props = np.array(
        [[50, 50, 60, 60], [30, 50, 50, 60], [35, 35, 45, 45], [0, 0, 10, 6]], np.float32
    )
    _, labels = image_regions(props, gt, np.array([3]), **IOU, background=True, ignore_boxes=crowd)
    np.testing.assert_array_equal(labels, [3, 0, 3])  # gt; the quarter-inside one; the positive
    assert max_ioa(props, crowd).round(2).tolist() == [1.0, 0.5, 0.25, 0.0]


def test_a_pool_past_its_memory_budget_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    per_image = [
        (rng.random((n, 4), np.float32) * 100, rng.integers(0, 4, n)) for n in (5, 0, 9, 3)
    ]
    in_memory = RegionPool.from_images(per_image)
    builder = PoolBuilder(tmp_path / "spill", max_bytes=100)  # spills after the first image
    for boxes, labels in per_image:
        builder.add(boxes, labels)
    mapped = builder.finish()
    assert isinstance(mapped.boxes, np.memmap) and isinstance(mapped.labels, np.memmap)
    for name in ("image_idx", "boxes", "labels"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(in_memory, name))
    assert (mapped.labels.dtype, mapped.image_idx.dtype) == (np.int16, np.int32)
    np.testing.assert_array_equal(
        sample_minibatch(np.random.default_rng(1), mapped, **BATCH),
        sample_minibatch(np.random.default_rng(1), in_memory, **BATCH),
    )


def _pool(n_fg: int, n_bg: int) -> RegionPool:
    labels = np.concatenate([np.full(n_fg, 1), np.zeros(n_bg, np.int64)])
    idx = np.arange(len(labels)) % 7  # regions spread over 7 images
    return RegionPool(idx, np.zeros((len(labels), 4), np.float32), labels)


def test_sample_minibatch_counts_32_96():
    pool = _pool(100, 1000)
    batch = sample_minibatch(np.random.default_rng(0), pool, **BATCH)
    assert len(batch) == 128 and len(set(batch.tolist())) == 128
    assert (pool.labels[batch] > 0).sum() == 32
    assert len(set(pool.image_idx[batch].tolist())) == 7  # across images


def test_sample_minibatch_fills_with_background():
    pool = _pool(5, 1000)
    batch = sample_minibatch(np.random.default_rng(0), pool, **BATCH)
    assert len(batch) == 128 and (pool.labels[batch] > 0).sum() == 5


def test_sample_minibatch_fills_with_positives_and_small_pool():
    pool = _pool(200, 10)
    batch = sample_minibatch(np.random.default_rng(0), pool, **BATCH)
    assert len(batch) == 128 and (pool.labels[batch] == 0).sum() == 10
    small = _pool(3, 4)
    assert sorted(sample_minibatch(np.random.default_rng(0), small, **BATCH).tolist()) == list(
        range(7)
    )


def test_sample_minibatch_deterministic_per_seed():
    pool = _pool(100, 1000)
    a = sample_minibatch(np.random.default_rng(5), pool, **BATCH)
    b = sample_minibatch(np.random.default_rng(5), pool, **BATCH)
    c = sample_minibatch(np.random.default_rng(6), pool, **BATCH)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # same regions in a different order also counts as a different member
    same_set = sample_minibatch(np.random.default_rng(6), _pool(32, 96), **BATCH)
    other = sample_minibatch(np.random.default_rng(7), _pool(32, 96), **BATCH)
    assert sorted(same_set.tolist()) == sorted(other.tolist()) == list(range(128))
    assert not np.array_equal(same_set, other)


def test_sample_minibatch_empty_pool():
    batch = sample_minibatch(np.random.default_rng(0), RegionPool(), **BATCH)
    assert batch.shape == (0,) and batch.dtype == np.int64
    assert len(RegionPool.from_images([])) == 0
