"""The detector: load -> propose -> warp + score (ensemble) -> per-class NMS.

    from detector import Detector
    from detector.config import load_config

    det = Detector.from_config(load_config("ilsvrc2014"))           # checkpoints from the config
    det = Detector.from_checkpoints(["m0.safetensors", "m1.safetensors"], multibox="mb.safetensors")
    d = det("photo.jpg")                 # or a numpy array, a PIL image, or a list of them
    print(d.boxes, d.scores, d.class_names, d.timings)

    for item, result in det.detect_many(paths, workers=2):  # result: Detections or Exception
        ...

Thread safety: ``__call__`` keeps no state between calls (every intermediate is local and
the models run in eval mode), so calls may run concurrently from several threads on one
``Detector``; ``detect_many`` does exactly that, with a private thread pool per call, when
it pipelines. Pipelining also starts selective-search worker processes (``spawn``): scripts
that call ``detect_many`` need the usual ``if __name__ == "__main__":`` guard, or
``processes=False``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from detector.config import Config
from detector.demo import with_demo_defaults
from detector.io import DEFAULT_MAX_PIXELS, ImageLike, read_image
from detector.structures import ClassList, Detections, Proposals

BUILD_HINT = (
    "build the demo models with `python -m detector.demo --build-only`, "
    "or train members with `python -m detector.train`"
)


CALIBRATION_CROPS = 256  # int8: warped proposals that calibrate, over all the images given


class ModelSetupError(ValueError):
    """Checkpoints that are missing or do not fit the config; the message says what was expected."""


class Detector:
    """R-CNN with an ensemble of GoogLeNets (Szegedy et al. 2014, section 8).

    Args:
        proposer: callable ``image (uint8[H, W, 3]) -> Proposals`` (a ``ProposalGenerator``);
            thread-safe (:meth:`detect_many` calls it from worker threads). If it has
            ``process_pool(workers)`` (as ``ProposalGenerator`` does), ``detect_many`` opens
            that pool and calls ``proposer(image, pool=pool)``.
        ensemble: object with ``score_image(image, boxes, context_pad, mean, std)``
            returning averaged softmax probabilities ``float32[N, K + 1]`` (column 0 background).
        classes: the K classes, in class-id order.
        context_pad, input_size: R-CNN's warp (p = 16 pixels of context in S = 224).
        mean, std: RGB normalisation in [0, 1] scale, as the members were trained.
        nms_iou, score_threshold, max_per_class, max_detections: per-class NMS settings.
        max_pixels: images above this many pixels are refused (``ImageLoadError``).
        calibration_images: an int8 ensemble is calibrated on the first this many images of
            :meth:`detect_many` (see :meth:`calibrate`).
    """

    def __init__(
        self,
        proposer: Any,
        ensemble: Any,
        classes: ClassList,
        *,
        context_pad: int = 16,
        input_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        nms_iou: float = 0.3,
        score_threshold: float = 0.01,
        max_per_class: int = 100,
        max_detections: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        calibration_images: int = 8,
    ):
        self.proposer = proposer
        self.ensemble = ensemble
        self.classes = classes
        self.context_pad = int(context_pad)
        self.input_size = int(input_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.nms_iou = float(nms_iou)
        self.score_threshold = float(score_threshold)
        self.max_per_class = int(max_per_class)
        self.max_detections = int(max_detections)
        self.max_pixels = int(max_pixels)
        self.calibration_images = int(calibration_images)
        self._calibration_lock = threading.Lock()

    # ---- building --------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Config, device: str | None = None, **overrides: Any) -> Detector:
        """Build from a :class:`Config`: members from ``cfg.model``, proposals from
        ``cfg.proposals``, NMS from ``cfg.inference``; ``overrides`` replace keyword arguments
        of ``__init__`` (e.g. ``score_threshold=0.2``).

        Raises:
            ModelSetupError: missing checkpoints (saying which and how to build them), a
                member count other than ``model.members``, or members that disagree.
        """
        import torch

        from detector.classifier import CheckpointError, classes_from_metadata, load_members
        from detector.ensemble import Ensemble, resolve_device
        from proposals.generator import ProposalGenerator

        cfg = with_demo_defaults(cfg)
        dev = str(resolve_device(device or cfg.inference.device))
        if cfg.inference.threads > 0:
            torch.set_num_threads(cfg.inference.threads)
        paths = member_paths(cfg)
        _check_multibox(cfg)
        try:
            members, meta = load_members(paths, dev)
        except CheckpointError as e:
            raise ModelSetupError(str(e)) from None
        classes = classes_from_metadata(meta) or _config_classes(cfg, meta)
        kwargs = _settings(cfg, meta) | overrides
        ensemble = Ensemble(
            members,
            device=dev,
            precision=cfg.inference.precision,
            chunk_size=cfg.inference.chunk_size,
            compile=cfg.inference.compile,
            **{k: kwargs[k] for k in ("input_size", "context_pad", "mean", "std")},
        )
        return cls(ProposalGenerator.from_config(cfg, device=dev), ensemble, classes, **kwargs)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | os.PathLike],
        multibox: str | os.PathLike | None = None,
        *,
        config: Config | None = None,
        device: str | None = None,
        **overrides: Any,
    ) -> Detector:
        """Build from member checkpoints (and a MultiBox checkpoint; None = selective search only).

        ``config`` (default: the paper's defaults) supplies everything else; ``overrides``
        replace ``__init__`` keyword arguments.
        """
        import copy

        cfg = copy.deepcopy(config) if config is not None else Config()
        cfg.model.checkpoints = [str(p) for p in paths]
        cfg.model.checkpoint_dir = ""
        cfg.model.members = len(cfg.model.checkpoints)
        cfg.proposals.multibox.enabled = multibox is not None
        cfg.proposals.multibox.checkpoint = str(multibox) if multibox is not None else ""
        return cls.from_config(cfg, device=device, **overrides)

    # ---- detection -------------------------------------------------------------------------

    def __call__(self, x: ImageLike | list[ImageLike]) -> Detections | list[Detections]:
        """Detect objects in one image (path, array or PIL image) or a list of them.

        Raises:
            ImageLoadError: an image that cannot be read (for a list: the first one).
        """
        if isinstance(x, list):
            return [self.detect(item) for item in x]
        return self.detect(x)

    def detect(self, x: ImageLike) -> Detections:
        """One image: load -> propose -> warp + score -> NMS."""
        clock = _Clock()
        image = read_image(x, self.max_pixels)
        clock.lap("load")
        proposals = self.propose(image)
        clock.lap("propose")
        return self._classify(image, proposals, clock)

    def _classify(self, image: np.ndarray, proposals: Proposals, clock: _Clock) -> Detections:
        parts: dict[str, float] = {}
        probs = self.score(image, proposals.boxes, parts)
        clock.lap("score")  # warp + CNNs; the split is kept as "warp" and "cnn"
        detections = self.nms(proposals.boxes, probs)
        clock.lap("nms")
        detections.num_proposals = len(proposals)
        detections.image_size = (int(image.shape[0]), int(image.shape[1]))
        detections.timings = {
            **clock.laps,
            "warp": parts.get("warp", 0.0),
            "cnn": parts.get("score", 0.0),
        }
        return detections

    def propose(self, image: np.ndarray) -> Proposals:
        """Selective search + MultiBox, merged (``image``: uint8[H, W, 3])."""
        return self.proposer(image)

    def score(
        self, image: np.ndarray, boxes: np.ndarray, timings: dict[str, float] | None = None
    ) -> np.ndarray:
        """Warp every box with context and average the members' softmax.

        Args:
            image (uint8[H, W, 3]); boxes (float32[N, 4]): internal xyxy.
            timings: if given, receives the seconds spent in "warp" and in "score" (the CNNs).
        Returns:
            float32[N, K + 1]: class probabilities, column 0 the background.
        """
        if len(boxes) == 0:
            return np.zeros((0, len(self.classes) + 1), dtype=np.float32)
        if getattr(self.ensemble, "needs_calibration", False):
            self._calibrate([(image, boxes)])
        probs = self.ensemble.score_image(
            image,
            boxes,
            context_pad=self.context_pad,
            mean=self.mean,
            std=self.std,
            timings=timings,
        )
        return np.asarray(probs, dtype=np.float32)

    def calibrate(self, images: Sequence[ImageLike]) -> int:
        """int8: calibrate the quantized members on warped proposals of these images
        (``CALIBRATION_CROPS`` in all, spread over each image's proposal list).

        Images that cannot be read or have no proposals are skipped. :meth:`detect_many`
        calls this on its first ``calibration_images`` images; a lone :meth:`detect` on an
        uncalibrated int8 ensemble calibrates on its own image. Returns the crops used.
        """
        pairs = []
        for item in images:
            try:
                image = read_image(item, self.max_pixels)
            except Exception:  # noqa: BLE001 - reported when the image itself is detected
                continue
            boxes = self.propose(image).boxes
            if len(boxes):
                pairs.append((image, boxes))
        return self._calibrate(pairs)

    def _calibrate(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> int:
        """Calibrate once (under a lock) on ``(image, boxes)`` pairs; returns the crops used."""
        import torch

        from detector.warp import warp_regions

        with self._calibration_lock:
            if not pairs or not getattr(self.ensemble, "needs_calibration", False):
                return 0
            per_image = -(-CALIBRATION_CROPS // len(pairs))
            crops = []
            for image, boxes in pairs:
                pick = np.linspace(0, len(boxes) - 1, min(len(boxes), per_image)).astype(int)
                crops.append(warp_regions(
                    image, boxes[pick], size=self.input_size, context_pad=self.context_pad,
                    mean=self.mean, std=self.std,
                ))  # fmt: skip
            batch = torch.cat(crops)
            self.ensemble.calibrate(batch)
            return len(batch)

    def nms(self, boxes: np.ndarray, probs: np.ndarray) -> Detections:
        """Per-class greedy NMS over the class columns 1..K (background never detected)."""
        from detector.nms import per_class_nms

        kept_boxes, scores, labels = per_class_nms(
            boxes,
            probs,
            nms_iou=self.nms_iou,
            score_threshold=self.score_threshold,
            max_per_class=self.max_per_class,
            max_detections=self.max_detections,
        )
        labels = np.asarray(labels, dtype=np.int64)
        return Detections(
            boxes=np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32),
            labels=labels,
            class_names=[self.classes.name_of(int(c)) for c in labels],
        )

    def detect_many(
        self,
        items: Iterable[ImageLike],
        workers: int = 0,
        *,
        processes: bool = True,
        pipeline: bool | None = None,
    ) -> Iterator[tuple[ImageLike, Detections | Exception]]:
        """Detect on many images, proposing for the next ones while the current one is scored
        (pipelining): end-to-end time tends to max(proposal time / workers, scoring time).

        Threads load each image, look up its cached selective-search boxes and run MultiBox
        (torch releases the GIL); uncached selective search, single-threaded C++, runs in a
        pool of ``workers`` spawned processes. At most ``workers + 1`` images are ahead.

        Pipelining pays only when scoring leaves cores free (a GPU, or fewer torch threads
        than cores). When CPU scoring already uses every core, work beside it stalls the
        whole OpenMP team: on 2 cores it measured 1-3 s per image slower than one image after
        another, so ``pipeline=None`` then detects serially (see docs/DECISIONS.md).

        Yields ``(item, Detections)`` or ``(item, Exception)`` in input order; a bad image
        never stops the iteration. Pipelined, ``timings`` holds the workers' ``load`` and
        ``propose`` seconds and ``wait``, the time scoring waited for them. An uncalibrated
        int8 ensemble is first calibrated on the first ``calibration_images`` items.

        Args:
            workers: images proposed at once; 0 = all available cores.
            processes: False keeps selective search in the threads (no process is started).
            pipeline: True or False forces the choice; None decides as above.
        """
        if getattr(self.ensemble, "needs_calibration", False) and self.calibration_images > 0:
            todo = iter(items)
            head = list(itertools.islice(todo, self.calibration_images))
            self.calibrate(head)
            items = itertools.chain(head, todo)
        if not (self.scoring_leaves_cores_free() if pipeline is None else pipeline):
            yield from self._serial(items)
            return
        threads = workers if workers > 0 else _available_cores()
        make_pool = getattr(self.proposer, "process_pool", None) if processes else None
        ss_pool = make_pool(threads) if make_pool is not None else None
        with ss_pool if ss_pool is not None else contextlib.nullcontext():
            yield from self._pipeline(items, threads, ss_pool)

    def scoring_leaves_cores_free(self) -> bool:
        """True when the members run on a GPU, or on fewer torch threads than there are cores."""
        import torch

        device = getattr(self.ensemble, "device", None)
        if device is not None and torch.device(device).type != "cpu":
            return True
        return torch.get_num_threads() < _available_cores()

    def _serial(
        self, items: Iterable[ImageLike]
    ) -> Iterator[tuple[ImageLike, Detections | Exception]]:
        for item in items:
            try:
                result: Detections | Exception = self.detect(item)
            except Exception as e:  # noqa: BLE001 - the image's result, reported by the caller
                result = e
            yield item, result

    def _pipeline(
        self, items: Iterable[ImageLike], threads: int, ss_pool: Any
    ) -> Iterator[tuple[ImageLike, Detections | Exception]]:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="propose")
        window: deque[tuple[ImageLike, Future]] = deque()
        todo = iter(items)
        try:
            for item in itertools.islice(todo, threads + 1):
                window.append((item, pool.submit(self._prepare, item, ss_pool)))
            while window:
                item, future = window.popleft()
                for nxt in itertools.islice(todo, 1):
                    window.append((nxt, pool.submit(self._prepare, nxt, ss_pool)))
                yield item, self._finish(future)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(
        self, x: ImageLike, ss_pool: Any = None
    ) -> tuple[np.ndarray, Proposals, _Clock] | Exception:
        """Worker body: load and propose; never raises."""
        try:
            clock = _Clock()
            image = read_image(x, self.max_pixels)
            clock.lap("load")
            if ss_pool is None:
                proposals = self.propose(image)
            else:
                proposals = self.proposer(image, pool=ss_pool)
            clock.lap("propose")
            return image, proposals, clock
        except Exception as e:  # noqa: BLE001 - the image's result, reported by the caller
            return e

    def _finish(self, future: Future) -> Detections | Exception:
        clock = _Clock()
        prepared = future.result()
        waited = clock.lap("wait")
        if isinstance(prepared, Exception):
            return prepared
        image, proposals, worker_clock = prepared
        clock.laps = {**worker_clock.laps, "wait": waited}
        try:
            return self._classify(image, proposals, clock)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge image
            return e


# ---- helpers --------------------------------------------------------------------------------


class _Clock:
    """Seconds per named stage, measured back to back."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = now - self._t
        self._t = now
        return self.laps[name]


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def member_paths(cfg: Config) -> list[Path]:
    """The member checkpoints: ``model.checkpoints``, else ``member_*.safetensors`` in
    ``model.checkpoint_dir``; exactly ``model.members`` of them, all present.

    Raises:
        ModelSetupError: what was expected, what was found, and how to build them.
    """
    if cfg.model.checkpoints:
        paths = [Path(os.path.expanduser(p)) for p in cfg.model.checkpoints]
        where = "model.checkpoints"
    elif cfg.model.checkpoint_dir:
        folder = Path(os.path.expanduser(cfg.model.checkpoint_dir))
        paths = sorted(folder.glob("member_*.safetensors"))
        where = f"{folder}/member_*.safetensors"
    else:
        raise ModelSetupError(
            f"no ensemble checkpoints: set model.checkpoints or model.checkpoint_dir "
            f"(expected {cfg.model.members} member_*.safetensors); {BUILD_HINT}"
        )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelSetupError(f"checkpoint not found: {', '.join(missing)}; {BUILD_HINT}")
    if len(paths) != cfg.model.members:
        raise ModelSetupError(
            f"expected {cfg.model.members} ensemble members (model.members), found "
            f"{len(paths)} in {where}; {BUILD_HINT} (or set model.members={len(paths)})"
        )
    return paths


def _check_multibox(cfg: Config) -> None:
    mb = cfg.proposals.multibox
    if mb.enabled and mb.checkpoint and not Path(os.path.expanduser(mb.checkpoint)).is_file():
        raise ModelSetupError(
            f"MultiBox checkpoint not found: {mb.checkpoint}; {BUILD_HINT}, train one with "
            "`python -m proposals.multibox train`, or set proposals.multibox.enabled=false"
        )


def _settings(cfg: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """``__init__`` keyword arguments: the warp from the checkpoints (what the members were
    trained with), falling back to ``cfg.model``; NMS from ``cfg.inference``."""
    inf = cfg.inference

    def pick(key: str, default: Any) -> Any:
        return meta.get(key) if meta.get(key) is not None else default

    return {
        "context_pad": pick("context_pad", cfg.model.context_pad),
        "input_size": pick("input_size", cfg.model.input_size),
        "mean": pick("mean", cfg.model.mean),
        "std": pick("std", cfg.model.std),
        "nms_iou": inf.nms_iou,
        "score_threshold": inf.score_threshold,
        "max_per_class": inf.max_per_class,
        "max_detections": inf.max_detections,
        "max_pixels": cfg.data.max_pixels,
        "calibration_images": inf.calibration_images,
    }


def _config_classes(cfg: Config, meta: dict[str, Any]) -> ClassList:
    """Classes for checkpoints without a class list (bare state dicts): ``data.classes``."""
    from detector.datasets.classes import default_classes, load_classes

    classes = load_classes(cfg.data.classes) if cfg.data.classes else default_classes()
    if len(classes) + 1 != meta.get("num_outputs", len(classes) + 1):
        raise ModelSetupError(
            f"checkpoints have {meta.get('num_outputs')} outputs but the class list "
            f"{cfg.data.classes or 'ILSVRC 200'} has {len(classes)} classes + background"
        )
    return classes
