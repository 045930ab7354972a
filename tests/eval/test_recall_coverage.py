"""Proposal coverage on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.boxes import box_iou
from detector.core.structures import ImageRecord, Proposals, ProposalSource
from eval.coverage import coverage, evaluate_proposals, format_report, ranked_boxes


def test_box_iou_matches_devkit_plus_one_convention() -> None:
    # Devkit inclusive boxes [0,0,9,9] and [5,0,14,9]: iw = 9-5+1 = 5, ih = 10, ov = 50/150.
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)  # internal = inclusive + 1 on x2, y2
    b = np.array([[5, 0, 15, 10]], dtype=np.float32)
    assert box_iou(a, b)[0, 0] == pytest.approx(50 / 150)


def test_coverage_pools_over_ground_truths() -> None:
    gt = [
        np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32),
        np.array([[0, 0, 100, 100]], dtype=np.float32),
    ]
    proposals = [
        np.array([[0, 0, 10, 10], [20, 20, 30, 35]], dtype=np.float32),  # IoU 1.0 and 100/150
        np.array([[0, 0, 100, 80]], dtype=np.float32),  # IoU 0.8
    ]
    c = coverage(gt, proposals)
    assert c.num_gt == 3 and c.num_images == 2
    assert c.coverage_50 == pytest.approx(1.0)
    assert c.recall_70 == pytest.approx(2 / 3)  # 0.667 misses 0.7
    # ten thresholds 0.5..0.95: IoU 1.0 passes 10, 0.667 passes 4, 0.8 passes 7 (0.8 >= 0.8)
    assert c.average_recall == pytest.approx(21 / 30)
    assert c.proposals_mean == 1.5 and c.proposals_median == 1.5
    assert c.by_size["small"]["num_gt"] == 2 and c.by_size["large"]["num_gt"] == 1


def test_empty_inputs() -> None:
    c = coverage([np.zeros((0, 4)), np.array([[0, 0, 5, 5]])], [np.zeros((0, 4)), np.zeros((0, 4))])
    assert c.num_gt == 1 and c.coverage_50 == 0.0
    c = coverage([], [])
    assert c.num_gt == 0 and c.coverage_50 == 0.0 and c.proposals_mean == 0.0


def test_union_ranks_multibox_first_and_reports_each_source() -> None:
    p = Proposals(
        boxes=np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 11, 11]], dtype=np.float32),
        scores=np.array([np.nan, 0.2, 0.9], dtype=np.float32),
        source=np.array([0, 1, 1], dtype=np.uint8),
    )
    ranked = ranked_boxes(p, (ProposalSource.SELECTIVE_SEARCH, ProposalSource.MULTIBOX), seed=0)
    assert ranked[0].tolist() == [0, 0, 11, 11] and ranked[1].tolist() == [50, 50, 60, 60]
    rec = ImageRecord(
        "a", 1, None, 100, 100, boxes=[[50, 50, 60, 60], [0, 0, 10, 10]], labels=[1, 2]
    )
    report = evaluate_proposals([rec], [p])
    assert report["sources"]["selective_search"]["coverage_50"] == 0.5
    assert report["sources"]["multibox"]["coverage_50"] == 1.0
    assert report["sources"]["union"]["coverage_50"] == 1.0
    assert report["curves"]["union"]["coverage_50"][0] == 0.5  # top-1 is the MultiBox 0.9 box
    assert "union" in format_report(report)


def test_report_says_none_for_a_size_without_objects() -> None:
    """Only large objects: the small and medium columns say "none", not a coverage of 0."""
    p = Proposals(
        boxes=np.array([[0, 0, 100, 100]], dtype=np.float32),
        scores=np.array([np.nan], dtype=np.float32),
        source=np.array([0], dtype=np.uint8),
    )
    rec = ImageRecord("a", 1, None, 200, 200, boxes=[[0, 0, 100, 100]], labels=[1])
    text = format_report(evaluate_proposals([rec], [p]))
    row = next(line for line in text.splitlines() if line.startswith("selective_search"))
    assert row.split()[-3:] == ["none", "none", "1.000"]
    assert "small 0, medium 0, large 1" in text


def test_recall_command_skips_an_unreadable_image_and_goes_on(tiny_tree, tmp_path, capsys):
    """``python -m eval.recall`` on a tree whose first val image is corrupt: one line about
    it, and coverage of the other images (``detector.run`` also goes on)."""
    import json
    import shutil

    from eval import recall

    root = tmp_path / "tree"
    shutil.copytree(tiny_tree, root)
    images = sorted((root / "Data" / "DET" / "val").iterdir())
    images[0].write_bytes(b"not a JPEG at all")
    out = tmp_path / "recall.json"
    argv = [
        "--data-root",
        str(root),
        "--split",
        "val",
        "--workers",
        "1",
        "--json",
        str(out),
        "proposals.multibox.enabled=false",
        "proposals.selective_search.cache_dir=none",
        "proposals.selective_search.resize_width=100",
        "proposals.selective_search.min_side=30",
    ]
    assert recall.main(argv) == 0
    err = capsys.readouterr().err
    assert f"eval.recall: skipping {images[0]}: not an image" in err
    report = json.loads(out.read_text())
    assert report["settings"]["images"] == len(images) - 1 >= 1
