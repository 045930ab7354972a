"""Fit R-CNN's heads on member 0's features: per-class box regressors and linear SVMs.

The command line is ``python -m detector.train --heads`` (after the members). Girshick et
al. 2014 (R-CNN), sections 2.3 and appendices B-C, on this project's features (member 0's
``fc`` input, 1024-d, see ``detector.heads``):

- **Regions.** Every image of ``heads.split`` (default ``data.train_split``) is warped as
  at inference (the members' warp) and member 0 computes the features, once, of: its ground
  truths, every proposal with IoU >= ``heads.bbox_iou`` with a ground truth, and at most
  ``heads.negatives_per_image`` random other proposals (the SVMs' pool; bounds memory).
- **Scale.** Features are multiplied by one factor that makes their mean L2 norm
  ``heads.feature_norm`` (R-CNN: 20) on these regions; the factor is stored with the heads.
- **Box regression** of class k: ridge regression (``heads.bbox_alpha``, R-CNN's lambda)
  from the features of the proposals whose best-overlapping ground truth is of class k with
  IoU >= 0.6 to the targets of ``detector.core.box_targets``.
- **SVM** of class k: positives are the ground truths of class k; negatives the proposals
  with IoU < ``heads.svm_neg_iou`` with every ground truth of class k (other classes'
  objects included). liblinear's L1-loss SVM (R-CNN: C 0.001, positive weight 2, bias
  term scaled 10). First round: ``heads.svm_first_negatives`` random negatives per image;
  then ``heads.svm_rounds`` rounds of hard-negative mining: every pool negative with margin
  above -1 (a margin violator) joins the training set and the SVM is refitted; it stops
  early when no new hard negative turns up.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from detector.build import heads_path, load_ensemble
from detector.core.box_targets import box_targets
from detector.core.boxes import box_iou
from detector.core.config import Config
from detector.core.digests import file_sha256
from detector.core.io import ImageLoadError, load_image
from detector.core.structures import ClassList, ImageRecord, Proposals
from detector.ensemble import Ensemble
from detector.heads import Heads, save_heads
from detector.training.classifier import prepare_split
from detector.training.scaffold import progress_bar

PREFIX = "detector.train"
HARD_MARGIN = -1.0  # R-CNN: a negative is hard when its margin exceeds -1 (it violates the margin)
SVM_BIAS_SCALE = 10.0  # liblinear's bias feature (R-CNN's B = 10)


@dataclass
class RegionFeatures:
    """The training regions of a split and member 0's features of them (one row each).

    Attributes:
        feats (float32[R, D]): unscaled features.
        boxes (float32[R, 4]): the region (internal xyxy).
        image_idx (int64[R]): its image, the position in the split's records.
        is_gt (bool[R]): a ground-truth box (else a proposal).
        gt_boxes (float32[R, 4]): the best-overlapping ground truth (the box itself for one).
        gt_labels (int64[R]): its class id, 1..K (0 for an image without objects).
        best_iou (float32[R]): the IoU with it.
        class_iou (float32[R, K]): the largest IoU with a ground truth of each class.
    """

    feats: np.ndarray
    boxes: np.ndarray
    image_idx: np.ndarray
    is_gt: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    best_iou: np.ndarray
    class_iou: np.ndarray

    def __len__(self) -> int:
        return len(self.feats)


# ----------------------------------------------------------------------------- regions


def select_regions(
    rec: ImageRecord,
    proposals: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    *,
    bbox_iou: float,
    negatives_per_image: int,
) -> dict[str, np.ndarray]:
    """One image's training regions (see :class:`RegionFeatures`), features not yet computed:
    its ground truths, the proposals with IoU >= ``bbox_iou``, up to ``negatives_per_image``
    random others."""
    gt = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(rec.labels, np.int64).reshape(-1)
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    iou = box_iou(proposals, gt) if len(gt) else np.zeros((len(proposals), 0))
    best_iou = iou.max(axis=1) if len(gt) else np.zeros(len(proposals))
    close = np.flatnonzero(best_iou >= bbox_iou)
    rest = np.flatnonzero(best_iou < bbox_iou)
    rest = rng.permutation(rest)[:negatives_per_image]
    chosen = np.sort(np.concatenate([close, rest]))
    boxes = np.concatenate([gt, proposals[chosen]])
    all_iou = np.concatenate([box_iou(gt, gt) if len(gt) else np.zeros((0, 0)), iou[chosen]])
    class_iou = np.zeros((len(boxes), num_classes), np.float32)
    for k in np.unique(labels):
        class_iou[:, k - 1] = all_iou[:, labels == k].max(axis=1)
    best = all_iou.argmax(axis=1) if len(gt) else np.zeros(len(boxes), np.int64)
    return {
        "boxes": boxes,
        "is_gt": np.arange(len(boxes)) < len(gt),
        "gt_boxes": gt[best] if len(gt) else boxes.copy(),
        "gt_labels": labels[best] if len(gt) else np.zeros(len(boxes), np.int64),
        "best_iou": all_iou.max(axis=1).astype(np.float32) if len(gt) else np.zeros(len(boxes)),
        "class_iou": class_iou,
    }


def region_features(
    ensemble: Ensemble,
    records: list[ImageRecord],
    proposals: list[Proposals | None],
    num_classes: int,
    *,
    bbox_iou: float,
    negatives_per_image: int,
    seed: int,
    max_pixels: int,
    progress: bool = False,
) -> RegionFeatures:
    """:func:`select_regions` of every image and member 0's features of them (``ensemble``:
    member 0 alone, as at inference). Images that fail to load are skipped with a note."""
    parts: dict[str, list[np.ndarray]] = {}
    bar = progress_bar(total=len(records), initial=0, desc="heads: features", enabled=progress)
    for i, (rec, props) in enumerate(zip(records, proposals, strict=True)):
        bar.update(1)
        if props is None:
            continue
        try:
            image = load_image(rec.path, max_pixels)
        except ImageLoadError as e:
            print(f"{PREFIX}: skipping {e}", file=sys.stderr)
            continue
        rng = np.random.default_rng([seed, i])
        sel = select_regions(
            rec, props.boxes, num_classes, rng,
            bbox_iou=bbox_iou, negatives_per_image=negatives_per_image,
        )  # fmt: skip
        _, feats = ensemble.score_and_features(ensemble.regions(image, sel["boxes"]))
        sel["feats"] = feats
        sel["image_idx"] = np.full(len(feats), i, np.int64)
        for key, value in sel.items():
            parts.setdefault(key, []).append(value)
    bar.close()
    if not parts:
        raise ValueError("no training regions for the heads (no images, or every image failed)")
    return RegionFeatures(**{k: np.concatenate(v) for k, v in parts.items()})


def feature_scale(feats: np.ndarray, norm: float) -> float:
    """The factor that gives the features a mean L2 norm of ``norm`` (R-CNN: 20)."""
    mean = float(np.linalg.norm(feats.astype(np.float64), axis=1).mean()) if len(feats) else 0.0
    return norm / mean if mean > 0 else 1.0


# ----------------------------------------------------------------------------- fitting


def fit_box_regressors(
    x: np.ndarray, regions: RegionFeatures, num_classes: int, *, bbox_iou: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Ridge regressors of every class on the scaled features ``x`` (float32[R, D]).

    Returns:
        weight (float32[K, 4, D]), bias (float32[K, 4]) and the samples of each class; a
        class without samples keeps zeros (its boxes are left as proposed).
    """
    from sklearn.linear_model import Ridge

    weight = np.zeros((num_classes, 4, x.shape[1]), np.float32)
    bias = np.zeros((num_classes, 4), np.float32)
    counts = []
    for k in range(1, num_classes + 1):
        rows = np.flatnonzero(
            ~regions.is_gt & (regions.gt_labels == k) & (regions.best_iou >= bbox_iou)
        )
        counts.append(len(rows))
        if len(rows) == 0:
            continue
        targets = box_targets(regions.boxes[rows], regions.gt_boxes[rows])
        model = Ridge(alpha=alpha).fit(x[rows].astype(np.float64), targets)
        weight[k - 1] = model.coef_
        bias[k - 1] = model.intercept_
    return weight, bias, counts


def fit_svm(
    positives: np.ndarray,
    pool: np.ndarray,
    first: np.ndarray,
    *,
    c: float,
    pos_weight: float,
    rounds: int,
    seed: int,
) -> tuple[np.ndarray, float, int]:
    """One linear SVM with R-CNN's hard-negative mining.

    Args:
        positives (float[P, D]): positive features (scaled).
        pool (float[M, D]): every candidate negative.
        first (int64[F]): the pool rows of the first round.
        c, pos_weight: liblinear's C and the positives' loss weight.
        rounds: mining rounds after the first (each adds the pool's margin violators).
        seed: liblinear's coordinate order (the fit is reproducible).
    Returns:
        weight (float32[D]), bias, and how many negatives the last fit used.
    """
    active = np.zeros(len(pool), bool)
    active[first] = True
    w, b = _fit_linear_svm(positives, pool[active], c=c, pos_weight=pos_weight, seed=seed)
    for _ in range(rounds):
        hard = ~active & (pool @ w + b > HARD_MARGIN)
        if not hard.any():
            break
        active |= hard
        w, b = _fit_linear_svm(positives, pool[active], c=c, pos_weight=pos_weight, seed=seed)
    return w, b, int(active.sum())


def _fit_linear_svm(
    pos: np.ndarray, neg: np.ndarray, *, c: float, pos_weight: float, seed: int
) -> tuple[np.ndarray, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    svm = LinearSVC(
        C=c,
        loss="hinge",  # R-CNN's liblinear solver: L2-regularised, L1-loss (dual)
        dual=True,
        class_weight={1: pos_weight, 0: 1.0},
        intercept_scaling=SVM_BIAS_SCALE,
        max_iter=10_000,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # A few passes short of liblinear's tolerance do not change the ranking.
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def fit_svms(
    x: np.ndarray,
    regions: RegionFeatures,
    num_classes: int,
    *,
    neg_iou: float,
    c: float,
    pos_weight: float,
    first_negatives: int,
    rounds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, int]]]:
    """The SVM of every class on the scaled features ``x`` (see the module docstring).

    Returns:
        weight (float32[K, D]), bias (float32[K]), per class its positives and the negatives
        of its last fit; a class without positives scores every region at margin -1.
    """
    weight = np.zeros((num_classes, x.shape[1]), np.float32)
    bias = np.full(num_classes, HARD_MARGIN, np.float32)
    stats = []
    for k in range(1, num_classes + 1):
        pos = np.flatnonzero(regions.is_gt & (regions.gt_labels == k))
        pool = np.flatnonzero(~regions.is_gt & (regions.class_iou[:, k - 1] < neg_iou))
        stats.append({"positives": len(pos), "negatives": 0})
        if len(pos) == 0 or len(pool) == 0:
            continue
        rng = np.random.default_rng([seed, k])
        first = _first_negatives(regions.image_idx[pool], first_negatives, rng)
        w, b, used = fit_svm(
            x[pos], x[pool], first, c=c, pos_weight=pos_weight, rounds=rounds, seed=seed
        )
        weight[k - 1], bias[k - 1] = w, b
        stats[-1]["negatives"] = used
    return weight, bias, stats


def _first_negatives(image_of: np.ndarray, per_image: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``per_image`` random positions of each image in ``image_of`` (the pool's images),
    sorted."""
    order = rng.permutation(len(image_of))
    grouped = np.argsort(image_of[order], kind="stable")  # by image, random within an image
    images = image_of[order][grouped]
    starts = np.r_[0, np.flatnonzero(np.diff(images)) + 1]
    rank = np.arange(len(images)) - np.repeat(starts, np.diff(np.r_[starts, len(images)]))
    return np.sort(order[grouped[rank < per_image]])


# ----------------------------------------------------------------------------- command


def member_zero_ensemble(cfg: Config) -> Ensemble:
    """Member 0 alone, with the warp it was trained on, as the detector runs it (int8 and
    compiled detectors take the features from the eager fp32 trunk: fitted on that)."""
    precision = "fp32" if cfg.inference.precision == "int8" else cfg.inference.precision
    inference = replace(cfg.inference, precision=precision, compile=False)
    model = replace(cfg.model, checkpoints=cfg.model.checkpoints[:1], checkpoint_dir="", members=1)
    ensemble, _ = load_ensemble(model, inference, inference.device)
    return ensemble


def train_heads(cfg: Config, *, progress: bool = True) -> Path:
    """Fit the box regressors and SVMs of a resolved config on member 0's features and write
    them to the heads file (``heads.checkpoint``, else ``heads.safetensors`` beside member 0).

    Raises:
        ValueError: no training regions; ModelSetupError/CheckpointError: bad members.
    """
    t0 = time.perf_counter()
    h = cfg.heads
    ensemble = member_zero_ensemble(cfg)
    device = torch.device(cfg.inference.device)
    split, classes = prepare_split(
        cfg, h.split or cfg.data.train_split, device, max_images=h.max_images
    )
    regions = region_features(
        ensemble, split.records, split.proposals, len(classes),
        bbox_iou=h.bbox_iou, negatives_per_image=h.negatives_per_image, seed=h.seed,
        max_pixels=cfg.data.max_pixels, progress=progress,
    )  # fmt: skip
    heads, stats = fit_heads(cfg, regions, classes, file_sha256(cfg.model.checkpoints[0]))
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    path = heads_path(cfg)
    return save_heads(path, heads, config_digest=cfg.digest(), settings=asdict(h), stats=stats)


def fit_heads(
    cfg: Config, regions: RegionFeatures, classes: ClassList, member_sha256: str
) -> tuple[Heads, dict]:
    """Both heads from the regions' features, with the ``heads`` settings of ``cfg``."""
    h = cfg.heads
    scale = feature_scale(regions.feats, h.feature_norm)
    x = regions.feats * np.float32(scale)
    bbox_w, bbox_b, bbox_counts = fit_box_regressors(
        x, regions, len(classes), bbox_iou=h.bbox_iou, alpha=h.bbox_alpha
    )
    svm_w, svm_b, svm_stats = fit_svms(
        x, regions, len(classes),
        neg_iou=h.svm_neg_iou, c=h.svm_c, pos_weight=h.svm_pos_weight,
        first_negatives=h.svm_first_negatives, rounds=h.svm_rounds, seed=h.seed,
    )  # fmt: skip
    heads = Heads(
        classes=classes,
        feature_scale=scale,
        svm_weight=svm_w,
        svm_bias=svm_b,
        bbox_weight=bbox_w,
        bbox_bias=bbox_b,
        member_sha256=member_sha256,
    )
    stats = {"regions": len(regions), "bbox_samples": bbox_counts, "svm": svm_stats}
    return heads, stats
