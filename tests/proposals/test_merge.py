"""merge_proposals: union, exact duplicates, source tags, canonical order."""

import numpy as np

from detector.core.structures import Proposals, ProposalSource
from proposals.merge import merge_proposals

SS, MB = int(ProposalSource.SELECTIVE_SEARCH), int(ProposalSource.MULTIBOX)


def _mb(boxes, scores):
    n = len(scores)
    return Proposals(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.full(n, MB, np.uint8),
    )


def test_union_dedup_tags_and_order():
    ss = np.array([[5, 5, 9, 9], [0, 0, 4, 4], [5, 5, 9, 9], [1, 2, 3, 4]], np.float32)
    mb = _mb([[0, 0, 4, 4], [2, 2, 8, 8], [0.5, 0, 3, 3], [2, 2, 8, 8]], [0.9, 0.3, 0.7, 0.1])
    out = merge_proposals(ss, mb)
    # SS sorted lexicographically, its duplicate dropped; [0,0,4,4] is in both: kept once as
    # selective search with MultiBox's 0.9; the repeated MultiBox box keeps its best score 0.3
    np.testing.assert_array_equal(
        out.boxes, [[0, 0, 4, 4], [1, 2, 3, 4], [5, 5, 9, 9], [0.5, 0, 3, 3], [2, 2, 8, 8]]
    )
    assert out.source.tolist() == [SS, SS, SS, MB, MB]
    np.testing.assert_allclose(out.scores, [0.9, np.nan, np.nan, 0.7, 0.3])
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32


def test_negative_zero_counts_as_a_duplicate():
    out = merge_proposals(np.array([[0, 0, 4, 4]], np.float32), _mb([[-0.0, 0, 4, 4]], [0.5]))
    assert len(out) == 1 and out.scores[0] == 0.5


def test_empty_inputs():
    empty = merge_proposals(np.zeros((0, 4), np.float32), Proposals())
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)
    only_ss = merge_proposals(np.array([[1, 1, 2, 2]], np.float32), Proposals())
    assert only_ss.source.tolist() == [SS] and np.isnan(only_ss.scores[0])
    only_mb = merge_proposals(
        np.zeros((0, 4), np.float32), _mb([[1, 1, 2, 2], [0, 0, 3, 3]], [0.2, 0.8])
    )
    np.testing.assert_array_equal(only_mb.boxes, [[0, 0, 3, 3], [1, 1, 2, 2]])
    assert only_mb.source.tolist() == [MB, MB]
