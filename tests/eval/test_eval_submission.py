"""Submission files: strict reading with FILE:LINE errors, writing, the per-class cap."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.structures import Detections
from eval.submission import (
    SubmissionArrays,
    cap_per_class,
    from_detections,
    ranking_order,
    read_submission,
    write_submission,
)


def write(tmp_path, text: str):
    path = tmp_path / "sub.txt"
    path.write_text(text)
    return path


def test_read_values_and_blank_lines(tmp_path):
    path = write(tmp_path, "1 3 0.5 10 20 30 40\n\n2 1 0.25 0 0 9.5 9\n")
    a = read_submission(path, num_classes=3, image_indices=[1, 2])
    assert a.image_index.tolist() == [1, 2]
    assert a.class_id.tolist() == [3, 1]
    assert a.score.tolist() == [0.5, 0.25]
    assert a.boxes.tolist() == [[10, 20, 30, 40], [0, 0, 9.5, 9]]


def test_empty_file_is_an_empty_submission(tmp_path):
    assert len(read_submission(write(tmp_path, ""), 3)) == 0
    assert len(read_submission(write(tmp_path, "\n  \n"), 3)) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 1 0.5 0 0 9\n", "expected 7 fields"),
        ("1 1 0.5 0 0 9 9 9\n", "expected 7 fields"),
        ("1 1 high 0 0 9 9\n", "score is not a number: 'high'"),
        ("1.0 1 0.5 0 0 9 9\n", "image_index is not an integer"),
        ("1 x 0.5 0 0 9 9\n", "class_id is not an integer"),
        ("1 1 0.5 0 0 9 nan\n", "ymax is not finite"),
        ("1 0 0.5 0 0 9 9\n", "class_id 0 outside 1..3"),
        ("1 4 0.5 0 0 9 9\n", "class_id 4 outside 1..3"),
        ("9 1 0.5 0 0 9 9\n", "image_index 9 is not in the split"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, text, problem):
    path = write(tmp_path, "1 1 0.9 0 0 9 9\n\n" + text)
    with pytest.raises(ValueError) as err:
        read_submission(path, num_classes=3, image_indices=[1, 2])
    assert str(err.value).startswith(f"{path}:3: ")
    assert problem in str(err.value)


def test_a_huge_token_is_cut_in_the_message(tmp_path):
    token = "9" * 200 + "x" * 5_000_000
    path = write(tmp_path, f"1 1 {token} 0 0 9 9\n")
    with pytest.raises(ValueError) as err:
        read_submission(path, num_classes=3)
    assert str(err.value).startswith(f"{path}:1: score is not a number: '999")
    assert len(str(err.value)) < len(str(path)) + 300


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_submission(tmp_path / "nope.txt", 3)


def test_write_read_round_trip(tmp_path):
    a = SubmissionArrays([2, 1], [1, 2], [0.123456789, 0.5], [[0, 1, 2, 3], [4.25, 5, 6, 7.5]])
    b = read_submission(write_submission(tmp_path / "out" / "s.txt", a), 2, [1, 2])
    assert b.image_index.tolist() == [1, 2]  # written by image index, then score
    np.testing.assert_allclose(b.score, a.score[::-1], rtol=1e-9)
    np.testing.assert_array_equal(b.boxes, a.boxes[::-1])


def test_from_detections_converts_to_inclusive():
    d = Detections(boxes=np.array([[10, 20, 30, 40]], np.float32), scores=[0.5], labels=[7])
    a = from_detections([(3, d), (4, Detections())])
    assert a.image_index.tolist() == [3] and a.class_id.tolist() == [7]
    assert a.boxes.tolist() == [[10, 20, 29, 39]]  # x2 = xmax + 1
    assert len(from_detections([])) == 0


def test_ranking_order_ties_by_image_then_file_order():
    a = SubmissionArrays([2, 1, 1, 3], [1, 1, 1, 1], [0.5, 0.5, 0.9, 0.5], np.zeros((4, 4)))
    assert ranking_order(a).tolist() == [2, 1, 0, 3]


def test_cap_keeps_top_per_class_over_the_set():
    a = SubmissionArrays(
        image_index=[1, 2, 1, 2, 3],
        class_id=[1, 1, 2, 1, 1],
        score=[0.1, 0.9, 0.3, 0.5, 0.7],
        boxes=np.arange(20).reshape(5, 4),
    )
    capped = cap_per_class(a, 2)
    assert sorted(zip(capped.class_id.tolist(), capped.score.tolist(), strict=True)) == [
        (1, 0.7),
        (1, 0.9),
        (2, 0.3),
    ]
    assert len(cap_per_class(a, 0)) == 5  # 0 = no cap
    assert len(cap_per_class(SubmissionArrays(), 3)) == 0
