"""Union of the selective-search and MultiBox proposals of one image.

The paper (section 8) adds MultiBox's top 200 boxes to selective search's. Exact duplicates
(identical float32 corners, rare: selective search yields boxes on the resized pixel grid,
MultiBox continuous ones) are kept once, tagged SELECTIVE_SEARCH (the base set, so its
per-source counts stay whole) and carrying the MultiBox score (no information is lost).

Canonical order: selective-search boxes first, sorted lexicographically on (x1, y1, x2, y2)
as ``selective_search`` returns them; then the MultiBox boxes by descending score (ties
broken lexicographically), the order of their confidence.
"""

from __future__ import annotations

import numpy as np

from detector.core.structures import Proposals, ProposalSource


def merge_proposals(ss_boxes: np.ndarray, multibox: Proposals) -> Proposals:
    """Merge the two sources.

    Args:
        ss_boxes (float32[N, 4]): selective-search boxes, internal xyxy (any order).
        multibox: MultiBox proposals (boxes float32[M, 4], scores float32[M]).
    Returns:
        Proposals with at most N + M boxes, no exact duplicates, in canonical order:
        scores NaN for pure selective-search boxes, source SELECTIVE_SEARCH / MULTIBOX.
    """
    ss = np.unique(np.asarray(ss_boxes, dtype=np.float32).reshape(-1, 4), axis=0)  # sorted
    ss_scores = np.full(len(ss), np.nan, dtype=np.float32)
    mb_boxes, mb_scores = _dedup_multibox(multibox.boxes, multibox.scores)
    in_ss = _rows_in(mb_boxes, ss)  # (M,) index into ss, -1 when absent
    shared = in_ss >= 0
    ss_scores[in_ss[shared]] = mb_scores[shared]
    mb_boxes, mb_scores = mb_boxes[~shared], mb_scores[~shared]
    order = np.lexsort((mb_boxes[:, 3], mb_boxes[:, 2], mb_boxes[:, 1], mb_boxes[:, 0], -mb_scores))
    mb_boxes, mb_scores = mb_boxes[order], mb_scores[order]
    source = np.concatenate(
        [
            np.full(len(ss), int(ProposalSource.SELECTIVE_SEARCH), np.uint8),
            np.full(len(mb_boxes), int(ProposalSource.MULTIBOX), np.uint8),
        ]
    )
    return Proposals(np.concatenate([ss, mb_boxes]), np.concatenate([ss_scores, mb_scores]), source)


def _dedup_multibox(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identical MultiBox boxes kept once, with their best score."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) == 0:
        return boxes, scores
    # best score first, then np.unique's return_index picks the first (= best) occurrence
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    uniq, first = np.unique(boxes[order], axis=0, return_index=True)
    return uniq, scores[order][first]


def _rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each row of rows (float32[M, 4]), its index in table (float32[N, 4]) or -1."""
    out = np.full(len(rows), -1, dtype=np.int64)
    if len(rows) == 0 or len(table) == 0:
        return out
    # + 0.0 turns -0.0 into 0.0, which compare equal but differ in bytes
    lookup = {r.tobytes(): i for i, r in enumerate(np.ascontiguousarray(table + 0.0))}
    for i, r in enumerate(np.ascontiguousarray(rows + 0.0)):
        out[i] = lookup.get(r.tobytes(), -1)
    return out
