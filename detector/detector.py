"""The detector: load -> propose -> warp -> score -> NMS (Szegedy et al. 2014, section 8).

    from detector import Detector, load_config, resolve_config

    det = Detector.from_config(resolve_config(load_config("demo")))    # the demo's models
    det = Detector.from_checkpoints(["m0.safetensors", "m1.safetensors"], multibox="mb.safetensors")
    d = det("photo.jpg")                 # or a numpy array, a PIL image, or a list of them
    print(d.boxes, d.scores, d.class_names, d.timings)

    for item, result in det.detect_many(paths, workers=2):  # result: Detections or Exception
        ...

Thread safety: ``__call__`` keeps no state between calls (every intermediate is local and
the models run in eval mode), so calls may run concurrently from several threads on one
``Detector``; ``detect_many`` does exactly that when it pipelines (``detector.batch``).
Pipelining also starts selective-search worker processes (``spawn``): scripts that call
``detect_many`` need the usual ``if __name__ == "__main__":`` guard, or ``processes=False``.

Timings (``Detections.timings``, seconds): ``load`` (decode), ``propose`` (selective search +
MultiBox), ``warp`` (crops), ``score`` (the CNNs), ``heads`` (box regression and SVM scores,
when enabled: ``detector.heads``), ``nms``; pipelined runs add ``wait``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Protocol

import numpy as np

from detector.core.boxes import box_iou
from detector.core.clock import Clock
from detector.core.config import Config
from detector.core.io import ImageLike, read_image
from detector.core.structures import ClassList, Detections, Proposals
from detector.heads import Heads, check_scorer_kind
from detector.nms import NmsSettings, per_class_nms
from detector.warp import Regions, WarpSettings, context_boxes


class Proposer(Protocol):
    """The propose step: ``image (uint8[H, W, 3]) -> Proposals``; thread-safe."""

    def __call__(self, image: np.ndarray) -> Proposals: ...


class Scorer(Protocol):
    """The warp and score steps (an :class:`detector.ensemble.Ensemble`)."""

    num_outputs: int  # K + 1
    warp: WarpSettings

    def regions(self, image: np.ndarray, boxes: np.ndarray) -> Regions: ...

    def score(self, crops: Regions) -> np.ndarray: ...

    def score_and_features(self, crops: Regions) -> tuple[np.ndarray, np.ndarray]: ...

    def calibrate_on_images(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> int: ...

    @property
    def needs_calibration(self) -> bool: ...


def duplicate_groups(boxes: np.ndarray, iou: float) -> np.ndarray:
    """int64[N]: for each box, the first box (in order) of its group. Greedy, in order: an
    ungrouped box starts a group and takes every ungrouped box overlapping it at IoU >=
    ``iou``. At 1.0 only identical boxes share a group."""
    n = len(boxes)
    group = np.full(n, -1, np.int64)
    for start in range(0, n):
        if group[start] >= 0:
            continue
        rest = np.flatnonzero(group[start:] < 0) + start
        close = box_iou(boxes[start : start + 1], boxes[rest])[0] >= iou
        group[rest[close]] = start
        group[start] = start
    return group


class Detector:
    """R-CNN with an ensemble of GoogLeNets.

    Args:
        proposer: the propose step (a ``proposals.generator.ProposalGenerator``).
        scorer: the warp and score steps (an ``Ensemble``): averaged softmax
            ``float32[N, K + 1]``, column 0 the background.
        classes: the K classes, in class-id order.
        nms: the per-class NMS settings.
        max_pixels: images above this many pixels are refused (``ImageLoadError``).
        calibration_images: an int8 scorer is calibrated on the first this many images of
            :meth:`detect_many` (see :meth:`calibrate`).
        heads: R-CNN's box regressors and SVMs on member 0's features (``detector.heads``);
            required by ``box_regression`` or ``scorer_kind="svm"``, else unused (may be None).
        box_regression: refine each proposal's box per class before NMS.
        scorer_kind: "softmax" (the ensemble's averaged softmax) or "svm" (the heads' SVMs;
            ``inference.scorer``).
        dedup_iou: proposals whose context boxes overlap at IoU >= this are scored once, by
            their group's first proposal (:func:`duplicate_groups`); 0 = every proposal is
            scored (the paper).
    """

    def __init__(
        self,
        proposer: Proposer,
        scorer: Scorer,
        classes: ClassList,
        *,
        nms: NmsSettings,
        max_pixels: int,
        calibration_images: int,
        heads: Heads | None,
        box_regression: bool,
        scorer_kind: str,
        dedup_iou: float,
    ):
        if scorer.num_outputs != len(classes) + 1:
            raise ValueError(
                f"the scorer has {scorer.num_outputs} outputs but there are {len(classes)} "
                "classes + background"
            )
        self.proposer = proposer
        self.scorer = scorer
        self.classes = classes
        self.nms_settings = nms
        self.max_pixels = int(max_pixels)
        self.calibration_images = int(calibration_images)
        if not 0 <= dedup_iou <= 1:
            raise ValueError(f"dedup_iou must be in [0, 1], got {dedup_iou}")
        self.dedup_iou = float(dedup_iou)
        self.box_regression = bool(box_regression)
        self.svm_scores = check_scorer_kind(scorer_kind) == "svm"
        self.heads = heads if self.box_regression or self.svm_scores else None
        if (self.box_regression or self.svm_scores) and heads is None:
            raise ValueError("box regression and the SVM scorer need heads (detector.heads)")
        if self.heads is not None and self.heads.classes.wnids != classes.wnids:
            raise ValueError("the heads were fitted for other classes than the detector's")

    # ---- building --------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Config) -> Detector:
        """Build from a resolved :class:`Config` (``detector.resolve.resolve_config``): members
        from ``model``, proposals from ``proposals``, NMS and precision from ``inference``.

        Raises:
            ModelSetupError: missing checkpoints (saying which and how to build them), a
                member count other than ``model.members``, or members that disagree.
        """
        from detector.build import detector_parts

        proposer, scorer, classes, settings = detector_parts(cfg)
        return cls(proposer, scorer, classes, **settings)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | os.PathLike],
        multibox: str | os.PathLike | None = None,
        *,
        config: Config | None = None,
    ) -> Detector:
        """Build from member checkpoints (and a MultiBox checkpoint; None = selective search only).

        ``config`` (default: the paper's defaults) supplies everything else.
        """
        cfg = copy.deepcopy(config) if config is not None else Config()
        cfg.model.checkpoints = [str(p) for p in paths]
        cfg.model.checkpoint_dir = ""
        cfg.model.members = len(cfg.model.checkpoints)
        cfg.proposals.multibox.enabled = multibox is not None
        cfg.proposals.multibox.checkpoint = str(multibox) if multibox is not None else ""
        return cls.from_config(cfg)

    # ---- one image -------------------------------------------------------------------------

    def __call__(self, x: ImageLike | list[ImageLike]) -> Detections | list[Detections]:
        """Detect objects in one image (path, array or PIL image) or a list of them.

        Raises:
            ImageLoadError: an image that cannot be read (for a list: the first one).
        """
        if isinstance(x, list):
            return [self.detect(item) for item in x]
        return self.detect(x)

    def detect(self, x: ImageLike) -> Detections:
        """One image: load -> propose -> warp -> score -> NMS."""
        clock = Clock()
        image = self.load(x)
        clock.lap("load")
        proposals = self.proposer(image)
        clock.lap("propose")
        return self.classify(image, proposals, clock)

    def classify(self, image: np.ndarray, proposals: Proposals, clock: Clock) -> Detections:
        """The steps after proposing: warp -> score (-> heads) -> NMS, timed on ``clock``."""
        boxes = proposals.boxes
        scored, inverse = self.representatives(boxes)
        regions = self.scorer.regions(image, boxes[scored])
        if self.heads is None:
            probs = self.scorer.score(regions)[inverse]
            clock.lap("score")
        else:
            probs, feats = self.scorer.score_and_features(regions)
            probs, feats = probs[inverse], feats[inverse]
            clock.lap("score")
            boxes, probs = self.apply_heads(boxes, probs, feats, image.shape[:2])
            clock.lap("heads")
        detections = self.nms(boxes, probs)
        clock.lap("nms")
        clock.split("score", "warp", regions.seconds)  # the warp ran inside the score lap
        detections.num_proposals = len(proposals)
        detections.image_size = (int(image.shape[0]), int(image.shape[1]))
        detections.timings = dict(clock.laps)
        return detections

    def representatives(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The proposals to warp and score (indices into ``boxes``) and, for each proposal,
        the position among them of the one whose scores it takes (itself without dedup)."""
        if self.dedup_iou <= 0 or len(boxes) < 2:
            everything = np.arange(len(boxes))
            return everything, everything
        warp = self.scorer.warp
        context = context_boxes(boxes, size=warp.size, context_pad=warp.context_pad)
        group = duplicate_groups(context, self.dedup_iou)
        scored, inverse = np.unique(group, return_inverse=True)
        return scored, inverse

    def load(self, x: ImageLike) -> np.ndarray:
        """The load step: a path, array or PIL image -> RGB ``uint8[H, W, 3]``."""
        return read_image(x, self.max_pixels)

    def apply_heads(
        self, boxes: np.ndarray, probs: np.ndarray, feats: np.ndarray, image_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The heads step: SVM scores in place of ``probs`` and per-class refined boxes
        (float32[N, K + 1, 4]), each as the settings ask; the rest passes through."""
        assert self.heads is not None
        if self.svm_scores:
            probs = self.heads.scores(feats)
        if self.box_regression:
            boxes = self.heads.refine(boxes, feats, image_size)
        return boxes, probs

    def nms(self, boxes: np.ndarray, probs: np.ndarray) -> Detections:
        """The NMS step: per-class greedy NMS over the class columns 1..K (``boxes``
        float32[N, 4], or per class float32[N, K + 1, 4])."""
        kept_boxes, scores, labels = per_class_nms(boxes, probs, **asdict(self.nms_settings))
        labels = np.asarray(labels, dtype=np.int64)
        return Detections(
            boxes=np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32),
            labels=labels,
            class_names=[self.classes.name_of(int(c)) for c in labels],
        )

    def calibrate(self, images: Sequence[ImageLike]) -> int:
        """int8: calibrate the scorer on warped proposals of these images (see
        ``Ensemble.calibrate_on_images``). Unreadable images are skipped. :meth:`detect_many`
        calls this on its first ``calibration_images`` images; a lone :meth:`detect` on an
        uncalibrated int8 scorer calibrates on its own image. Returns the crops used."""
        pairs = []
        for item in images:
            try:
                image = self.load(item)
            except Exception:  # noqa: BLE001 - reported when the image itself is detected
                continue
            pairs.append((image, self.proposer(image).boxes))
        return self.scorer.calibrate_on_images(pairs)

    # ---- many images -----------------------------------------------------------------------

    def detect_many(
        self,
        items: Iterable[ImageLike],
        workers: int = 0,
        *,
        processes: bool = True,
        pipeline: bool | None = None,
    ) -> Iterator[tuple[ImageLike, Detections | Exception]]:
        """``(item, Detections or Exception)`` for each item, in input order; a bad image never
        stops the iteration. Pipelines proposals of the next images while one is scored when
        that pays (see :func:`detector.batch.detect_many` for the arguments)."""
        from detector.batch import detect_many

        yield from detect_many(self, items, workers, processes=processes, pipeline=pipeline)
