"""Typed values passed between the stages.

Box convention (the only one inside the code): float ``xyxy`` in continuous pixel
coordinates, ``x1 <= x2``, a box covering pixel columns ``x1 .. x2-1``. The ILSVRC devkit's
inclusive frame (``xmax`` is the last pixel, ``w = xmax - xmin + 1``) maps to it by
``x2 = xmax + 1``; conversions happen only at the edges (reading XML, writing submission
files, evaluating): see :func:`to_inclusive` and :func:`from_inclusive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np


class ProposalSource(IntEnum):
    """Where a proposal came from (stored as uint8 in :class:`Proposals.source`)."""

    SELECTIVE_SEARCH = 0
    MULTIBOX = 1


def from_inclusive(boxes: np.ndarray) -> np.ndarray:
    """Devkit inclusive ``(xmin, ymin, xmax, ymax)`` -> internal continuous xyxy, float32."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += 1.0
    return out.astype(np.float32)


def to_inclusive(boxes: np.ndarray) -> np.ndarray:
    """Internal continuous xyxy -> devkit inclusive ``(xmin, ymin, xmax, ymax)``, float64."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= 1.0
    return out


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass
class ImageRecord:
    """One annotated image, as every dataset reader yields it.

    Attributes:
        image_id: name of the image in its split (ILSVRC: the ImageSets name, no extension).
        index: 1-based position in the split's list (the devkit's image_index).
        path: the image file, or None when only annotations are available.
        width, height: image size in pixels from the annotation (0 when unknown).
        boxes (float32[N, 4]): ground-truth boxes, internal xyxy.
        labels (int64[N]): class ids, 1..K (0 is background and never appears here).
        complete_for: the classes whose every instance in the image is boxed; None = all
            classes (an exhaustively annotated image: ILSVRC val, the 2014 train additions,
            COCO, VOC). A 2013 ILSVRC train image listed in ``train_pos_X`` is complete for
            X only: its unboxed regions may hold objects of other classes, so training takes
            no background from it (``train.background_from``).
        ignore_boxes (float32[M, 4]): regions that are neither object nor background (COCO
            crowd boxes): proposals mostly inside one are left out of training.
        source: the part of the split the record came from (ILSVRC: ``val1``,
            ``train_pos_1k``, a list's name, ...); "" where the reader sets none (COCO, VOC).
    """

    image_id: str
    index: int
    path: Path | None
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    complete_for: frozenset[int] | None = None
    ignore_boxes: np.ndarray = field(default_factory=empty_boxes)
    source: str = ""

    @property
    def exhaustive(self) -> bool:
        """Every object of every class is boxed (background may be taken anywhere)."""
        return self.complete_for is None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore_boxes = np.asarray(self.ignore_boxes, dtype=np.float32).reshape(-1, 4)
        if len(self.boxes) != len(self.labels):
            raise ValueError(
                f"{self.image_id}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )


@dataclass
class ClassList:
    """The detector's classes. ``ids[i]`` is the 1-based class id of ``wnids[i]``/``names[i]``."""

    wnids: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.wnids) != len(self.names):
            raise ValueError("wnids and names differ in length")
        if len(set(self.wnids)) != len(self.wnids):
            raise ValueError("duplicate class wnid in class list")

    def __len__(self) -> int:
        return len(self.wnids)

    def id_of(self, wnid: str) -> int:
        """1-based class id of ``wnid``; KeyError naming it when unknown."""
        try:
            return self._index()[wnid]
        except KeyError:
            raise KeyError(f"unknown class {wnid!r}") from None

    def name_of(self, class_id: int) -> str:
        return self.names[class_id - 1]

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_cache"):
            self._cache = {w: i + 1 for i, w in enumerate(self.wnids)}
        return self._cache


@dataclass
class Proposals:
    """Candidate boxes for one image.

    Attributes:
        boxes (float32[N, 4]): internal xyxy in original-image pixels, clipped to the image.
        scores (float32[N]): objectness where the source has one (MultiBox), NaN otherwise.
        source (uint8[N]): :class:`ProposalSource` of each box.
    """

    boxes: np.ndarray = field(default_factory=empty_boxes)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))
    source: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.uint8))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.source = np.asarray(self.source, dtype=np.uint8).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.source):
            raise ValueError("Proposals: boxes, scores and source differ in length")

    def __len__(self) -> int:
        return len(self.boxes)

    def from_source(self, source: ProposalSource) -> Proposals:
        keep = self.source == source
        return Proposals(self.boxes[keep], self.scores[keep], self.source[keep])


@dataclass
class Detections:
    """Detections for one image, sorted by descending score.

    Attributes:
        boxes (float32[N, 4]): internal xyxy in original-image pixels.
        scores (float32[N]): averaged softmax probability of the class.
        labels (int64[N]): class ids 1..K.
        class_names (list[str]): name of each detection's class.
        num_proposals: how many proposals were scored.
        timings: seconds per stage (load, propose, warp, score = the CNNs, heads = box
            regression / SVMs when enabled, nms; pipelined: wait).
        image_size: (height, width) of the image the boxes refer to.
    """

    boxes: np.ndarray = field(default_factory=empty_boxes)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    class_names: list[str] = field(default_factory=list)
    num_proposals: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict:
        """JSON-ready form (boxes as lists of floats, internal xyxy)."""
        return {
            "boxes": np.round(self.boxes.astype(np.float64), 2).tolist(),
            # 9 significant digits, as the submission writes them: a float32 score whole, so
            # the log ranks detections exactly as the detector did (no ties from rounding)
            "scores": [float(f"{float(s):.9g}") for s in self.scores],
            "labels": [int(v) for v in self.labels],
            "class_names": list(self.class_names),
            "num_proposals": int(self.num_proposals),
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
            "image_size": [int(v) for v in self.image_size],
        }
