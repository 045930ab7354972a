"""R-CNN's per-class heads on member 0's pooled features: box regressors and linear SVMs.

Beyond the paper (which used neither; docs/DECISIONS.md, "R-CNN heads"). Both heads are
linear in the features ``f`` of a proposal (member 0's ``fc`` input, scaled by
``feature_scale`` so that their mean norm on the training regions is R-CNN's 20):

- the SVM of class k scores ``margin_k = w_k . (s f) + b_k``; the detector reports
  ``sigmoid(margin_k)``: the ranking within a class is the SVM's, and scores stay in (0, 1)
  so ``inference.score_threshold`` keeps its meaning (0.01 keeps margins above -4.6);
- the regressor of class k predicts R-CNN's targets ``t = W_k (s f) + c_k``
  (``detector.core.box_targets``): the proposal's box refined for class k.

The heads are one safetensors file (``heads.safetensors`` beside member 0 by default):
tensors ``svm.weight`` [K, D], ``svm.bias`` [K], ``bbox.weight`` [K, 4, D], ``bbox.bias``
[K, 4], and JSON metadata under ``"heads"``::

    {"format": "inception-rcnn/heads", "version": 1, "classes": {"wnids": [...], ...},
     "feature_dim": 1024, "feature_scale": 0.7, "member_sha256": "<member 0's file>", ...}

``member_sha256`` ties the heads to the features they were fitted on: heads of another
member 0 are refused (:func:`load_heads`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.classifier import METADATA_RULES as MEMBER_RULES
from detector.classifier import classes_from_metadata
from detector.core.box_targets import apply_box_targets, clip_to_image
from detector.core.checkpoints import (
    CheckpointError,
    Rule,
    check_metadata,
    is_int,
    read_safetensors,
    write_safetensors,
)
from detector.core.structures import ClassList

FORMAT = "inception-rcnn/heads"
METADATA_KEY = "heads"
HEADS_NAME = "heads.safetensors"  # the default file, in member 0's folder
SCORER_KINDS = ("softmax", "svm")  # inference.scorer: the ensemble's softmax or these SVMs


def check_scorer_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`SCORER_KINDS`, else a ValueError naming the setting."""
    if kind not in SCORER_KINDS:
        raise ValueError(f"inference.scorer must be one of {', '.join(SCORER_KINDS)}, got {kind!r}")
    return kind


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


METADATA_RULES: dict[str, Rule] = {
    "format": (repr(FORMAT), lambda v: v == FORMAT),
    "classes": MEMBER_RULES["classes"],
    "feature_dim": ("an integer >= 1", lambda v: is_int(v, 1)),
    "feature_scale": (
        "a finite number > 0",
        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
    ),
    "member_sha256": ("64 lowercase hex digits", lambda v: bool(_SHA256.match(v))),
}
REQUIRED = ("format", "classes", "feature_dim", "feature_scale", "member_sha256")


@dataclass(frozen=True)
class Heads:
    """Per-class SVMs and box regressors for K classes on D-dimensional features.

    Attributes:
        classes: the K classes (class id k is row k - 1).
        feature_scale: features are multiplied by this before either head.
        svm_weight (float32[K, D]), svm_bias (float32[K]): the SVMs.
        bbox_weight (float32[K, 4, D]), bbox_bias (float32[K, 4]): the regressors.
        member_sha256: SHA-256 of the member-0 checkpoint the features came from.
    """

    classes: ClassList
    feature_scale: float
    svm_weight: np.ndarray
    svm_bias: np.ndarray
    bbox_weight: np.ndarray
    bbox_bias: np.ndarray
    member_sha256: str

    @property
    def feature_dim(self) -> int:
        return int(self.svm_weight.shape[1])

    def margins(self, feats: np.ndarray) -> np.ndarray:
        """float32[N, K]: each SVM's signed distance ``w . (s f) + b`` (R-CNN's score)."""
        x = self._scaled(feats)
        return (x @ self.svm_weight.T + self.svm_bias).astype(np.float32)

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """float32[N, K + 1] in the layout of the softmax: column 0 (background) is 0,
        column k is ``sigmoid(margin_k)``."""
        m = self.margins(feats)
        out = np.zeros((len(m), len(self.classes) + 1), np.float32)
        out[:, 1:] = 1.0 / (1.0 + np.exp(-np.clip(m, -80.0, 80.0)))
        return out

    def deltas(self, feats: np.ndarray) -> np.ndarray:
        """float32[N, K, 4]: the regression targets each class predicts for each proposal."""
        x = self._scaled(feats)
        d = np.einsum("nd,kjd->nkj", x, self.bbox_weight, optimize=True)
        return (d + self.bbox_bias[None]).astype(np.float32)

    def refine(
        self, boxes: np.ndarray, feats: np.ndarray, image_size: tuple[int, int]
    ) -> np.ndarray:
        """The proposals' boxes refined per class, clipped to the image.

        Args:
            boxes (float32[N, 4]): the proposals (internal xyxy).
            feats (float32[N, D]): member 0's features of their crops.
            image_size: (height, width).
        Returns:
            float32[N, K + 1, 4]: column k the box for class k; column 0 the proposal.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        refined = apply_box_targets(boxes[:, None, :], self.deltas(feats))
        out = np.empty((len(boxes), len(self.classes) + 1, 4), np.float32)
        out[:, 0] = boxes
        out[:, 1:] = clip_to_image(refined, *image_size)
        return out

    def _scaled(self, feats: np.ndarray) -> np.ndarray:
        x = np.asarray(feats, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"heads expect features [N, {self.feature_dim}], got {x.shape}")
        return x * np.float32(self.feature_scale)


def save_heads(path: str | Path, heads: Heads, **extra: Any) -> Path:
    """Write ``heads`` as one safetensors file, atomically; ``extra`` metadata (how they were
    trained) is kept as given."""
    meta = {
        **extra,
        "format": FORMAT,
        "version": 1,
        "classes": {"wnids": list(heads.classes.wnids), "names": list(heads.classes.names)},
        "feature_dim": heads.feature_dim,
        "feature_scale": float(heads.feature_scale),
        "member_sha256": heads.member_sha256,
    }
    tensors = {
        "svm.weight": heads.svm_weight,
        "svm.bias": heads.svm_bias,
        "bbox.weight": heads.bbox_weight,
        "bbox.bias": heads.bbox_bias,
    }
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in tensors.items()}
    return write_safetensors(path, tensors, METADATA_KEY, meta)


def load_heads(
    path: str | Path, *, member_sha256: str | None = None, classes: ClassList | None = None
) -> Heads:
    """Read heads written by :func:`save_heads`, checking them against what they will see.

    Args:
        member_sha256: the SHA-256 of the member-0 checkpoint in use; heads fitted on
            another one are refused.
        classes: the detector's classes; another class list is refused.
    Raises:
        CheckpointError: a missing or malformed file, or heads that do not fit, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: heads file not found")
    tensors, meta = read_safetensors(path, METADATA_KEY)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: not a heads file (metadata lacks {', '.join(missing)})")
    check_metadata(path, meta, METADATA_RULES)
    stored = classes_from_metadata(meta)
    k, d = len(stored), int(meta["feature_dim"])
    shapes = {
        "svm.weight": (k, d),
        "svm.bias": (k,),
        "bbox.weight": (k, 4, d),
        "bbox.bias": (k, 4),
    }
    for name, shape in shapes.items():
        found = tuple(tensors[name].shape) if name in tensors else None
        if found != shape:
            raise CheckpointError(f"{path}: tensor {name!r} must have shape {shape}, got {found}")
    if classes is not None and list(classes.wnids) != stored.wnids:
        raise CheckpointError(
            f"{path}: heads for {k} other classes than the detector's {len(classes)}"
        )
    if member_sha256 is not None and meta["member_sha256"] != member_sha256:
        raise CheckpointError(
            f"{path}: heads were fitted on the features of another member 0 "
            f"(sha256 {meta['member_sha256'][:12]}..., this one {member_sha256[:12]}...); "
            "train them again: python -m detector.train --heads"
        )
    arrays = {name: tensors[name].float().numpy() for name in shapes}
    return Heads(
        classes=stored,
        feature_scale=float(meta["feature_scale"]),
        svm_weight=arrays["svm.weight"],
        svm_bias=arrays["svm.bias"],
        bbox_weight=arrays["bbox.weight"],
        bbox_bias=arrays["bbox.bias"],
        member_sha256=meta["member_sha256"],
    )
