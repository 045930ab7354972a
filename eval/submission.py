"""Devkit submission files: one detection per line,
``<image_index> <class_id> <score> <xmin> <ymin> <xmax> <ymax>``.

Boxes in these files are in the devkit's inclusive frame (``xmax`` is the last pixel column);
:class:`SubmissionArrays` keeps that frame, so the evaluator's arithmetic is the devkit's.
``image_index`` is the 1-based line number of the image in the split's list and ``class_id``
is 1..K. Reading is strict: a malformed line is a ``ValueError`` ``"FILE:LINE: problem"``,
never a silent skip.

    arrays = read_submission("val_submission.txt", num_classes=200, image_indices=range(1, 20122))
    write_submission("out.txt", cap_per_class(from_detections(items), 30_000))
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.core.atomic import atomic_write_text
from detector.core.config import short_repr
from detector.core.structures import Detections, to_inclusive

# Structured row of one line; numpy's C parser rejects "1.0" for an int field like int() does.
_ROW_DTYPE = np.dtype([("image", "i8"), ("cls", "i8"), ("score", "f8"), ("box", "f8", (4,))])


@dataclass
class SubmissionArrays:
    """All detections of a submission, one row per line, in file order.

    Attributes:
        image_index (int64[M]): 1-based index of the image in the split's list.
        class_id (int64[M]): 1..K.
        score (float64[M]): confidence; higher ranks first.
        boxes (float64[M, 4]): inclusive ``(xmin, ymin, xmax, ymax)``, the devkit's frame.
    """

    image_index: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    score: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))

    def __post_init__(self) -> None:
        self.image_index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.image_index)
        if not n == len(self.class_id) == len(self.score) == len(self.boxes):
            raise ValueError("SubmissionArrays: fields differ in length")

    def __len__(self) -> int:
        return len(self.image_index)

    def take(self, keep: np.ndarray) -> SubmissionArrays:
        """Rows selected by a boolean mask or an index array, in that order."""
        return SubmissionArrays(
            self.image_index[keep], self.class_id[keep], self.score[keep], self.boxes[keep]
        )


def from_detections(items: Iterable[tuple[int, Detections]]) -> SubmissionArrays:
    """``(image_index, Detections)`` pairs -> rows; internal boxes go to the inclusive frame."""
    parts = [(i, d) for i, d in items if len(d)]
    if not parts:
        return SubmissionArrays()
    return SubmissionArrays(
        image_index=np.concatenate([np.full(len(d), i, np.int64) for i, d in parts]),
        class_id=np.concatenate([np.asarray(d.labels, np.int64) for _, d in parts]),
        score=np.concatenate([np.asarray(d.scores, np.float64) for _, d in parts]),
        boxes=np.concatenate([to_inclusive(d.boxes) for _, d in parts]),
    )


def from_records(items: Iterable[tuple[int, dict]]) -> SubmissionArrays:
    """``(image_index, ok record of a detections log)`` pairs -> rows (see ``detector.outputs``)."""
    dets = []
    for index, record in items:
        d = record["detections"]
        boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)  # as logged, not rounded again
        dets.append((index, Detections(boxes=boxes, scores=d["scores"], labels=d["labels"])))
    return from_detections(dets)


def ranking_order(arrays: SubmissionArrays) -> np.ndarray:
    """The devkit's global ranking: descending score; ties by image index, then file order.

    (``eval_detection.m`` sorts by image, then stably by score within each image, then stably
    by score over the concatenation: equal scores end up in (image, file position) order.)
    """
    # two stable sorts (faster than one lexsort): image order, then score over it
    by_image = np.argsort(arrays.image_index, kind="stable")
    return by_image[np.argsort(-arrays.score[by_image], kind="stable")]


def cap_per_class(arrays: SubmissionArrays, max_per_class_total: int) -> SubmissionArrays:
    """Keep the top ``max_per_class_total`` detections of each class over the whole set (R-CNN).

    The kept rows are the first of each class in :func:`ranking_order`, so the cap never
    changes which detections the devkit ranks above the cut. ``<= 0`` keeps everything.
    Rows come back in ranking order.
    """
    if max_per_class_total <= 0 or len(arrays) == 0:
        return arrays
    order = ranking_order(arrays)
    cls = arrays.class_id[order]
    by_class = np.argsort(cls, kind="stable")  # groups classes, ranking kept inside each
    starts = np.searchsorted(cls[by_class], cls[by_class], side="left")
    rank_in_class = np.empty(len(order), np.int64)
    rank_in_class[by_class] = np.arange(len(order)) - starts
    return arrays.take(order[rank_in_class < max_per_class_total])


def write_submission(path: str | Path, arrays: SubmissionArrays) -> Path:
    """Write rows as devkit lines, atomically, the one submission writer of the project.

    Lines are ordered by image index, then by descending score (ties keep their order), so
    every command writes the same file for the same detections. Scores keep 9 significant
    digits, boxes 2 decimals.
    """
    by_image = np.argsort(arrays.image_index, kind="stable")
    order = by_image[np.argsort(-arrays.score[by_image], kind="stable")]
    order = order[np.argsort(arrays.image_index[order], kind="stable")]
    rows = arrays.take(order)
    lines = [
        f"{i} {c} {s:.9g} {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f}\n"
        for i, c, s, b in zip(rows.image_index, rows.class_id, rows.score, rows.boxes, strict=True)
    ]
    return atomic_write_text(path, "".join(lines))


def read_submission(
    path: str | Path,
    num_classes: int,
    image_indices: Collection[int] | None = None,
) -> SubmissionArrays:
    """Read a submission file; every line must be valid.

    Args:
        path: the file; blank lines are allowed, nothing else is skipped.
        num_classes: K; class ids must be 1..K.
        image_indices: the split's image indices; other indices are errors (None: any >= 1).
    Raises:
        ValueError ``"FILE:LINE: problem"`` for the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: submission file not found")
    allowed = None if image_indices is None else np.fromiter(image_indices, np.int64)
    arrays = _read_fast(path)
    if arrays is None or _first_bad_row(arrays, num_classes, allowed) is not None:
        # The slow parser is the one place that words errors; it also accepts anything
        # numpy's stricter parser refused but that is valid (e.g. "+3").
        arrays = _read_slow(path, num_classes, allowed)
    return arrays


def _read_fast(path: Path) -> SubmissionArrays | None:
    """numpy's C parser (2 s per 2 M lines, 3x faster than Python); None on any problem."""
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        return SubmissionArrays()
    try:
        rows = np.loadtxt(path, dtype=_ROW_DTYPE, ndmin=1, comments=None)
    except (ValueError, UnicodeDecodeError):
        return None
    return SubmissionArrays(rows["image"], rows["cls"], rows["score"], rows["box"])


def _first_bad_row(
    arrays: SubmissionArrays, num_classes: int, allowed: np.ndarray | None
) -> int | None:
    bad = ~np.isfinite(arrays.score) | ~np.isfinite(arrays.boxes).all(axis=1)
    bad |= (arrays.class_id < 1) | (arrays.class_id > num_classes) | (arrays.image_index < 1)
    if allowed is not None:
        bad |= ~np.isin(arrays.image_index, allowed)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def _read_slow(path: Path, num_classes: int, allowed: np.ndarray | None) -> SubmissionArrays:
    allowed_set = None if allowed is None else set(allowed.tolist())
    rows = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append(_parse_line(line, f"{path}:{lineno}", num_classes, allowed_set))
    if not rows:
        return SubmissionArrays()
    cols = list(zip(*rows, strict=True))
    return SubmissionArrays(cols[0], cols[1], cols[2], np.array([r[3:] for r in rows]))


def _parse_line(line: str, where: str, num_classes: int, allowed: set[int] | None) -> tuple:
    parts = line.split()
    if len(parts) != 7:
        raise ValueError(
            f"{where}: expected 7 fields '<image_index> <class_id> <score> <xmin> <ymin> "
            f"<xmax> <ymax>', got {len(parts)}"
        )
    image, cls = _int(parts[0], "image_index", where), _int(parts[1], "class_id", where)
    values = [_float(p, name, where) for p, name in zip(parts[2:], _FLOAT_NAMES, strict=True)]
    if not 1 <= cls <= num_classes:
        raise ValueError(f"{where}: class_id {cls} outside 1..{num_classes}")
    if image < 1 or (allowed is not None and image not in allowed):
        raise ValueError(f"{where}: image_index {image} is not in the split's image list")
    return (image, cls, *values)


_FLOAT_NAMES = ("score", "xmin", "ymin", "xmax", "ymax")


def _int(text: str, name: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {name} is not an integer: {short_repr(text)}") from None


def _float(text: str, name: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {name} is not a number: {short_repr(text)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} is not finite: {short_repr(text)}")
    return value
