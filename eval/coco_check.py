"""pycocotools AP at IoU 0.5 on the same ground truth and detections: a cross-check only.

It differs from the devkit by design (101-point interpolated precision, no small-object
threshold, its own tie-breaking), so it is printed beside our figure, never instead of it.
Boxes go to COCO's ``[x, y, w, h]`` from the internal frame (``w = x2 - x1``, which is the
devkit's ``xmax - xmin + 1``); blacklisted (image, class) pairs are removed from both sides,
as the devkit ignores them; every box counts (area range "all"), and ``maxDets`` is set above
the largest number of detections on one image so nothing is cut.

    check = coco_ap50(records, arrays, num_classes=200, blacklist=pairs)
    print(f"pycocotools AP@0.5 (cross-check): {check.mAP:.4f}")

Two backends compute it: faster-coco-eval (a C++ reimplementation of pycocotools'
``COCOeval``, same interface and figures; the optional extra ``inception-rcnn[fast]``),
used when installed, else pycocotools itself, whose Python loops take ~55 s on 10,000
images x 100 detections.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.core.structures import ImageRecord
from eval.ilsvrc_ap import blacklisted
from eval.submission import SubmissionArrays

LABEL = "pycocotools AP@0.5 (cross-check: 101-point interpolation, no small-object rule)"
BACKENDS = ("faster-coco-eval", "pycocotools")  # in order of preference


def available_backends() -> list[str]:
    """The installed :data:`BACKENDS`, preferred first."""
    import importlib.util

    modules = {"faster-coco-eval": "faster_coco_eval", "pycocotools": "pycocotools"}
    return [b for b in BACKENDS if importlib.util.find_spec(modules[b]) is not None]


def label(backend: str) -> str:
    """The printed name of the figure (:data:`LABEL`, naming a non-default backend)."""
    if backend == "pycocotools":
        return LABEL
    return LABEL.replace("(cross-check:", f"(cross-check, computed by {backend}:")


def _coco_api(backend: str | None):
    """(COCO, COCOeval, backend name) of ``backend`` (None: the preferred installed one)."""
    backend = backend or next(iter(available_backends()), "pycocotools")
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"coco_ap50: unknown backend {backend!r} ({', '.join(BACKENDS)})")
    return COCO, COCOeval, backend


@dataclass
class CocoCheck:
    """pycocotools' figures.

    Attributes:
        ap (float64[K]): AP of class ids 1..K; NaN for classes with no ground truth
            (pycocotools leaves them out of its mean).
        mAP: mean over classes with ground truth (0.0 when there are none).
        backend: which implementation computed it (:data:`BACKENDS`).
    """

    ap: np.ndarray
    mAP: float  # noqa: N815 - the paper's name
    backend: str = "pycocotools"


def coco_ap50(
    gt: Sequence[ImageRecord],
    dets: SubmissionArrays,
    num_classes: int,
    blacklist: Iterable[tuple[int, int]] = frozenset(),
    backend: str | None = None,
) -> CocoCheck:
    """pycocotools ``COCOeval`` (bbox, IoU 0.5 only, area "all") -> :class:`CocoCheck`.

    Args:
        backend: "faster-coco-eval" or "pycocotools"; None = faster-coco-eval when installed.
    """
    COCO, COCOeval, backend = _coco_api(backend)  # noqa: N806 - the classes

    pairs = {(int(i), int(c)) for i, c in blacklist}
    gt_dataset = _coco_ground_truth(gt, num_classes, pairs)
    ap = np.full(num_classes, np.nan)
    has_gt = np.bincount(
        [a["category_id"] for a in gt_dataset["annotations"]], minlength=num_classes + 1
    )[1:]
    keep = ~blacklisted(dets.image_index, dets.class_id, pairs, num_classes)
    dets = dets.take(keep)
    if len(dets) == 0 or not has_gt.any():
        ap[has_gt > 0] = 0.0
        return CocoCheck(ap=ap, mAP=_mean(ap), backend=backend)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(_coco_detections(dets))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng = [[0.0, 1e12]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [int(np.bincount(dets.image_index).max())]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # (recall thresholds, classes)
    for k, cat in enumerate(ev.params.catIds):
        column = precision[:, k]
        ap[cat - 1] = float(column[column > -1].mean()) if (column > -1).any() else np.nan
    ap[(has_gt > 0) & np.isnan(ap)] = 0.0
    return CocoCheck(ap=ap, mAP=_mean(ap), backend=backend)


def _mean(ap: np.ndarray) -> float:
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else 0.0


def _coco_ground_truth(
    gt: Sequence[ImageRecord], num_classes: int, pairs: set[tuple[int, int]]
) -> dict:
    annotations = []
    for rec in gt:
        for box, label in zip(rec.boxes.astype(np.float64), rec.labels, strict=True):
            if (rec.index, int(label)) in pairs:
                continue
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "unmatched"
                    "image_id": rec.index,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": r.index, "width": r.width, "height": r.height} for r in gt],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)],
    }


def _coco_detections(dets: SubmissionArrays) -> np.ndarray:
    """Rows ``[image_id, x, y, w, h, score, class]`` (``loadRes`` accepts this array form)."""
    x1, y1 = dets.boxes[:, 0], dets.boxes[:, 1]
    w = dets.boxes[:, 2] + 1 - x1  # inclusive -> internal x2, then COCO's width
    h = dets.boxes[:, 3] + 1 - y1
    return np.column_stack([dets.image_index, x1, y1, w, h, dets.score, dets.class_id]).astype(
        np.float64
    )
