"""ILSVRC DET average precision, exactly as the official devkit's ``eval_detection.m``.

The protocol (docs/PROTOCOLS.md, "Evaluation"):
  1. boxes are inclusive ``(xmin, ymin, xmax, ymax)``: ``w = xmax - xmin + 1``;
  2. each ground truth has its own threshold ``thr = min(iou, w*h / ((w+10)*(h+10)))``;
  3. ``ov = iw*ih / ua`` with the devkit's +1 widths; a hit needs ``ov >= thr``;
  4. per image, detections in descending score (stable); each takes, among the unmatched
     same-class ground truths it hits, the one with the largest ov (first in XML order on ties);
  5. detections of a blacklisted (image, class) are ignored and those objects leave npos;
  6. one global ranking (descending score, stable over image order);
  7. VOC all-point AP;
  8. mAP over classes 1..K, K the largest class id in the ground truth (detections of
     classes above K are not evaluated). A class without positives has AP 0 when it has no
     detection at all and AP NaN when it has any (blacklisted ones included: the devkit
     computes ``0/0`` recall), so the devkit's mAP is then NaN. :attr:`EvalResult.mAP` is
     that number; :attr:`EvalResult.mAP_with_positives` the mean over classes with positives.

Everything runs in the devkit's inclusive frame and float64, so the comparisons are the
devkit's own arithmetic. Matching is vectorised: detection/ground-truth pairs are built for
all (image, class) groups at once, and the greedy assignment runs in "rounds" (round r takes
the r-th candidate detection of every group together), so a Python loop runs once per round,
not once per detection.

    result = evaluate(records, read_submission(path, 200, indices), 200, blacklist)
    print(result.mAP)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.core.structures import ClassList, ImageRecord, to_inclusive
from eval.submission import SubmissionArrays, ranking_order

PIXEL_TOLERANCE = 10  # the devkit's pixelTolerance: small objects get a lower threshold
DEFAULT_IOU = 0.5  # the devkit's defaultIOUthr


@dataclass
class EvalResult:
    """Per-class figures of one evaluation, classes 1..K (K the largest ground-truth class id).

    Attributes:
        ap (float64[K]): average precision of class ids 1..K (index ``c - 1``); NaN for a
            class with detections but no positives, 0 for one with neither (the devkit's).
        npos (int64[K]): ground truths counted as positives (blacklisted ones left out).
        num_dets (int64[K]): detections scored (blacklisted ones left out).
        num_tp (int64[K]): of those, true positives.
        num_ignored (int64[K]): blacklisted detections (neither TP nor FP).
        degenerate (list[int]): class ids with no positives (AP 0 or NaN, see ``ap``).
        recall, precision (list of float64[n_c]): each class's curve in ranking order.
        settings: the protocol's parameters and counts, for the JSON report.
    """

    ap: np.ndarray
    npos: np.ndarray
    num_dets: np.ndarray
    num_tp: np.ndarray
    num_ignored: np.ndarray
    degenerate: list[int]
    recall: list[np.ndarray] = field(repr=False)
    precision: list[np.ndarray] = field(repr=False)
    settings: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """K: the largest class id in the ground truth."""
        return len(self.ap)

    @property
    def nan_classes(self) -> list[int]:
        """Class ids whose AP is NaN: detections (blacklisted ones included), no positives."""
        return [int(c) + 1 for c in np.flatnonzero(np.isnan(self.ap))]

    @property
    def mAP(self) -> float:  # noqa: N802 - the paper's name
        """The devkit's mAP: the mean AP over classes 1..K; NaN when a class's AP is NaN
        (see :attr:`mAP_reason`) or when the ground truth has no object (K = 0)."""
        return float(self.ap.mean()) if len(self.ap) else float("nan")

    @property
    def mAP_reason(self) -> str | None:  # noqa: N802
        """Why :attr:`mAP` is NaN (None when it is a number)."""
        if not len(self.ap):
            return "the ground truth has no objects (K = 0)"
        nan = self.nan_classes
        if not nan:
            return None
        ids = ", ".join(str(c) for c in nan[:10]) + (
            f", ... ({len(nan)} in all)" if len(nan) > 10 else ""
        )
        verb = "has" if len(nan) == 1 else "have"
        return f"class{'es' if len(nan) > 1 else ''} {ids} {verb} detections but no positives"

    @property
    def mAP_with_positives(self) -> float:  # noqa: N802
        """Mean AP over the classes with positives (NaN when there are none)."""
        present = self.ap[self.npos > 0]
        return float(present.mean()) if len(present) else float("nan")

    def to_json(self, classes: ClassList | None = None) -> dict:
        """JSON-ready report: mAP (null when NaN, with ``mAP_reason``), the mean over classes
        with positives, settings, one entry per class (with wnid/name if given)."""
        rows = []
        for c in range(1, self.num_classes + 1):
            row = {
                "id": c,
                "ap": _json_float(self.ap[c - 1]),
                "npos": int(self.npos[c - 1]),
                "num_dets": int(self.num_dets[c - 1]),
                "num_tp": int(self.num_tp[c - 1]),
                "num_ignored": int(self.num_ignored[c - 1]),
                "degenerate": c in self.degenerate,
            }
            if classes is not None and c <= len(classes):
                row["wnid"], row["name"] = classes.wnids[c - 1], classes.names[c - 1]
            rows.append(row)
        return {
            "mAP": _json_float(self.mAP),
            "mAP_reason": self.mAP_reason,
            "mAP_classes_with_positives": _json_float(self.mAP_with_positives),
            "num_classes": self.num_classes,
            "num_classes_with_positives": int((self.npos > 0).sum()),
            "degenerate_classes": list(self.degenerate),
            "nan_classes": self.nan_classes,
            "settings": dict(self.settings),
            "classes": rows,
        }


def _json_float(value: float) -> float | None:
    """NaN -> None (JSON has no NaN)."""
    return None if np.isnan(value) else float(value)


@dataclass
class _GroundTruth:
    """All ground truths, image by image in XML order; boxes float64[G, 4] inclusive."""

    image: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    thr: np.ndarray


def evaluate(
    gt: Sequence[ImageRecord],
    dets: SubmissionArrays,
    num_classes: int | None = None,
    blacklist: Iterable[tuple[int, int]] = frozenset(),
    iou: float = DEFAULT_IOU,
    pixel_tolerance: float = PIXEL_TOLERANCE,
) -> EvalResult:
    """Score a submission against the ground truth with the devkit's rules.

    Args:
        gt: the split's images (``ImageRecord.index`` is the devkit image_index; boxes internal).
        dets: the submission, boxes inclusive (as read from the file).
        num_classes: the size of the class list: ground-truth and detection class ids must
            be in 1..num_classes (None: any id >= 1). It is not K: K is always the largest
            class id in the ground truth, and detections above K are not evaluated.
        blacklist: ``(image_index, class_id)`` pairs left out of the evaluation.
        iou: the overlap a large object needs (the devkit's 0.5); small objects need less.
        pixel_tolerance: the devkit's 10 px of the small-object rule.
    Raises:
        ValueError for detections on images not in ``gt`` or with class ids outside
        1..num_classes.
    """
    truth = _ground_truth(gt, iou, pixel_tolerance)
    k = _num_classes(truth.label, num_classes)
    _check_detections(dets, gt, num_classes)
    above = dets.class_id > k  # classes above K are not evaluated (the devkit's loop ends at K)
    dets = dets.take(~above) if above.any() else dets
    pairs = {(int(i), int(c)) for i, c in blacklist}
    gt_ok = ~blacklisted(truth.image, truth.label, pairs, k)
    det_ok = ~blacklisted(dets.image_index, dets.class_id, pairs, k)
    order = ranking_order(dets)
    ranked = dets.take(order[det_ok[order]])  # ignored detections add no (rec, prec) point
    tp = match_detections(ranked, _subset(truth, gt_ok), k)
    npos = np.bincount(truth.label[gt_ok], minlength=k + 1)[1:].astype(np.int64)
    ignored = np.bincount(dets.class_id[~det_ok], minlength=k + 1)[1:].astype(np.int64)
    result = _per_class_ap(ranked.class_id, tp, npos, ignored)
    result.settings = {
        "protocol": "ILSVRC DET devkit eval_detection.m",
        "iou": float(iou),
        "pixel_tolerance": float(pixel_tolerance),
        "ap": "VOC all-point (monotone precision, sentinels)",
        "mAP": "mean over classes 1..K, K the largest class id in the ground truth; "
        "NaN when a class has detections but no positives",
        "num_images": len(gt),
        "num_detections": len(dets) + int(above.sum()),
        "num_detections_above_k": int(above.sum()),
        "num_ignored_detections": int((~det_ok).sum()),
        "num_ignored_ground_truths": int((~gt_ok).sum()),
        "blacklist_pairs": len(pairs),
    }
    return result


def small_object_threshold(boxes: np.ndarray, iou: float, pixel_tolerance: float) -> np.ndarray:
    """``min(iou, w*h / ((w+t)*(h+t)))`` per inclusive box (float64[G, 4]) -> float64[G]."""
    # the devkit's variable names, literally: its gt_w is the y extent (the formula is symmetric)
    gt_w = boxes[:, 3] - boxes[:, 1] + 1
    gt_h = boxes[:, 2] - boxes[:, 0] + 1
    thr = (gt_w * gt_h) / ((gt_w + pixel_tolerance) * (gt_h + pixel_tolerance))
    return np.minimum(iou, thr)


def overlaps(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Devkit overlap of paired inclusive boxes, float64[P, 4] x float64[P, 4] -> float64[P].

    Pairs that do not intersect (``iw <= 0`` or ``ih <= 0``) get -inf: never a hit.
    """
    iw = np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]) + 1
    ih = np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]) + 1
    ua = (
        (det[:, 2] - det[:, 0] + 1) * (det[:, 3] - det[:, 1] + 1)
        + (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
        - iw * ih
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = iw * ih / ua
    return np.where((iw > 0) & (ih > 0), ov, -np.inf)


def match_detections(ranked: SubmissionArrays, truth: _GroundTruth, num_classes: int) -> np.ndarray:
    """The devkit's greedy matching -> bool[M], True for a true positive.

    ``ranked`` must be in :func:`ranking_order`: restricted to one (image, class) it is the
    devkit's per-image order (descending score, file order on ties), and groups never
    interact, so one global order serves every group.
    """
    tp = np.zeros(len(ranked), dtype=bool)
    det_idx, gt_idx = _candidate_pairs(ranked, truth, num_classes)
    if len(det_idx) == 0:
        return tp
    ov = overlaps(ranked.boxes[det_idx], truth.boxes[gt_idx])
    hit = ov >= truth.thr[gt_idx]
    det_idx, gt_idx, ov = det_idx[hit], gt_idx[hit], ov[hit]
    if len(det_idx) == 0:
        return tp
    rounds = _round_of_detection(
        det_idx, _group_key(ranked.image_index, ranked.class_id, num_classes)
    )
    # within a round: each detection's pairs, best ov first, XML order on ties
    order = np.lexsort((gt_idx, -ov, det_idx, rounds))
    det_idx, gt_idx, rounds = det_idx[order], gt_idx[order], rounds[order]
    bounds = np.searchsorted(rounds, np.arange(rounds.max() + 2))
    matched = np.zeros(len(truth.label), dtype=bool)
    for r in range(len(bounds) - 1):
        d, g = det_idx[bounds[r] : bounds[r + 1]], gt_idx[bounds[r] : bounds[r + 1]]
        free = ~matched[g]
        d, g = d[free], g[free]
        first = np.r_[True, d[1:] != d[:-1]] if len(d) else np.zeros(0, bool)
        # one detection per group per round, so the chosen objects are all distinct
        matched[g[first]] = True
        tp[d[first]] = True
    return tp


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP (``VOCap.m``): sentinels, precision made monotone from the right,
    area summed where recall changes. NaN precision (0/0) is skipped like MATLAB's ``max``."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _ground_truth(gt: Sequence[ImageRecord], iou: float, pixel_tolerance: float) -> _GroundTruth:
    indices = [r.index for r in gt]
    if len(set(indices)) != len(indices):
        raise ValueError("ground truth: duplicate image index in the split")
    counts = [len(r.labels) for r in gt]
    boxes = (
        np.concatenate([to_inclusive(r.boxes) for r in gt]) if gt else np.zeros((0, 4))
    ).reshape(-1, 4)
    label = np.concatenate([r.labels for r in gt]) if gt else np.zeros(0, np.int64)
    return _GroundTruth(
        image=np.repeat(np.asarray(indices, np.int64), counts),
        label=label.astype(np.int64),
        boxes=boxes,
        thr=small_object_threshold(boxes, iou, pixel_tolerance),
    )


def _subset(truth: _GroundTruth, keep: np.ndarray) -> _GroundTruth:
    return _GroundTruth(truth.image[keep], truth.label[keep], truth.boxes[keep], truth.thr[keep])


def _num_classes(labels: np.ndarray, num_classes: int | None) -> int:
    """K, the largest class id in the ground truth (0 without objects), checked against the
    class list's size."""
    largest = int(labels.max()) if len(labels) else 0
    if num_classes is not None and largest > num_classes:
        raise ValueError(f"ground truth has class id {largest} > num_classes {num_classes}")
    if len(labels) and labels.min() < 1:
        raise ValueError("ground truth has class id < 1")
    return largest


def _check_detections(dets: SubmissionArrays, gt: Sequence[ImageRecord], limit: int | None) -> None:
    if len(dets) == 0:
        return
    bad = (dets.class_id < 1) | (dets.class_id > (limit if limit is not None else np.inf))
    if bad.any():
        bound = f"1..{limit}" if limit is not None else ">= 1"
        raise ValueError(f"detections: class id {dets.class_id[bad][0]} outside {bound}")
    known = np.isin(dets.image_index, np.asarray([r.index for r in gt], np.int64))
    if not known.all():
        raise ValueError(f"detections: image index {dets.image_index[~known][0]} not in the split")
    if not (np.isfinite(dets.score).all() and np.isfinite(dets.boxes).all()):
        raise ValueError("detections: non-finite score or box")


def _group_key(image: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """One int64 per (image, class): groups never interact in the matching."""
    return image.astype(np.int64) * (num_classes + 1) + label


def blacklisted(
    image: np.ndarray, label: np.ndarray, pairs: set[tuple[int, int]], k: int
) -> np.ndarray:
    """bool[N]: is ``(image[i], label[i])`` one of the blacklisted ``pairs``?"""
    if not pairs or len(image) == 0:
        return np.zeros(len(image), dtype=bool)
    # pairs of classes outside 1..K cannot occur in checked data and would alias other keys
    keys = np.array([i * (k + 1) + c for i, c in pairs if 1 <= c <= k], np.int64)
    return np.isin(_group_key(image, label, k), keys)


def _candidate_pairs(
    ranked: SubmissionArrays, truth: _GroundTruth, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) of the same image and class -> int64[P] index pairs."""
    gkey = _group_key(truth.image, truth.label, k)
    gsort = np.argsort(gkey, kind="stable")  # keeps XML order inside a group
    dkey = _group_key(ranked.image_index, ranked.class_id, k)
    start = np.searchsorted(gkey[gsort], dkey, side="left")
    count = np.searchsorted(gkey[gsort], dkey, side="right") - start
    det_idx = np.repeat(np.arange(len(ranked)), count)
    offset = np.arange(len(det_idx)) - np.repeat(np.cumsum(count) - count, count)
    return det_idx, gsort[np.repeat(start, count) + offset]


def _round_of_detection(det_idx: np.ndarray, det_key: np.ndarray) -> np.ndarray:
    """For each pair, the rank of its detection among its group's candidate detections."""
    # pairs come in detection order, so the distinct detections are where det_idx changes
    cand = det_idx[np.r_[True, det_idx[1:] != det_idx[:-1]]]  # ascending = ranking order
    by_group = np.argsort(det_key[cand], kind="stable")
    keys = det_key[cand][by_group]
    rank = np.empty(len(cand), np.int64)
    rank[by_group] = np.arange(len(cand)) - np.searchsorted(keys, keys, side="left")
    return rank[np.searchsorted(cand, det_idx)]


def _per_class_ap(
    class_id: np.ndarray, tp: np.ndarray, npos: np.ndarray, ignored: np.ndarray
) -> EvalResult:
    """Cumulate each class's TP/FP in ranking order -> AP (VOCap) per class.

    A class without positives gets what the devkit computes: AP 0 with no detection at all,
    NaN with any (its recall is 0/0), blacklisted detections included (``ignored``)."""
    k = len(npos)
    by_class = np.argsort(class_id, kind="stable")  # ranking order kept inside each class
    bounds = np.searchsorted(class_id[by_class], np.arange(1, k + 2))
    num_dets = np.diff(bounds).astype(np.int64)
    ap, num_tp = np.zeros(k), np.zeros(k, np.int64)
    recall, precision = [], []
    for c in range(k):
        hits = tp[by_class[bounds[c] : bounds[c + 1]]]
        ctp = np.cumsum(hits, dtype=np.float64)
        cfp = np.cumsum(~hits, dtype=np.float64)
        prec = ctp / np.maximum(ctp + cfp, 1)
        rec = ctp / npos[c] if npos[c] > 0 else np.zeros_like(ctp)
        recall.append(rec)
        precision.append(prec)
        num_tp[c] = int(hits.sum())
        if npos[c] > 0:
            ap[c] = voc_ap(rec, prec)
        else:
            ap[c] = np.nan if num_dets[c] + ignored[c] > 0 else 0.0
    return EvalResult(
        ap=ap,
        npos=npos,
        num_dets=num_dets,
        num_tp=num_tp,
        num_ignored=ignored,
        degenerate=[c + 1 for c in range(k) if npos[c] == 0],
        recall=recall,
        precision=precision,
    )
