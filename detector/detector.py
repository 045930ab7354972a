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

from detector.core.clock import Clock
from detector.core.config import Config
from detector.core.io import ImageLike, read_image
from detector.core.structures import ClassList, Detections, Proposals
from detector.heads import Heads, check_scorer_kind
from detector.nms import NmsSettings, per_class_nms
from detector.warp import Regions


class Proposer(Protocol):
    """The propose step: ``image (uint8[H, W, 3]) -> Proposals``; thread-safe."""

    def __call__(self, image: np.ndarray) -> Proposals: ...


class Scorer(Protocol):
    """The warp and score steps (an :class:`detector.ensemble.Ensemble`)."""

    num_outputs: int  # K + 1

    def regions(self, image: np.ndarray, boxes: np.ndarray) -> Regions: ...

    def score(self, crops: Regions) -> np.ndarray: ...

    def score_and_features(self, crops: Regions) -> tuple[np.ndarray, np.ndarray]: ...

    def calibrate_on_images(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> int: ...

    @property
    def needs_calibration(self) -> bool: ...


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
        regions = self.scorer.regions(image, proposals.boxes)
        boxes = proposals.boxes
        if self.heads is None:
            probs = self.scorer.score(regions)
            clock.lap("score")
        else:
            probs, feats = self.scorer.score_and_features(regions)
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
