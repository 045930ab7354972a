"""Proposal coverage: how many ground truths the proposals reach, per source and merged.

Coverage is the paper's metric (docs/PROTOCOLS.md, "Proposal coverage"): over all ground
truths, the fraction whose best IoU with any proposal of its image is >= 0.5, pooled over the
set. IoU is computed on internal boxes, which equals the devkit's "+1" IoU on inclusive boxes.
Also reported: recall at 0.7, average recall over IoU 0.5:0.05:0.95, coverage by object size
(sqrt of area: small < 32 px, medium < 96 px, large), proposals per image.

The recall-vs-number-of-proposals curve needs an order. MultiBox boxes are taken by
descending objectness; selective search returns a set (OpenCV orders it with an unseeded
``rand()``), so its boxes are taken in a seeded random order. The union takes MultiBox
first, then selective search, mirroring the paper's "added back 200 proposals".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detector.core.boxes import box_iou
from detector.core.structures import ImageRecord, Proposals, ProposalSource

AR_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
SIZE_BUCKETS = {"small": (0.0, 32.0), "medium": (32.0, 96.0), "large": (96.0, float("inf"))}
SOURCES = {
    "selective_search": (ProposalSource.SELECTIVE_SEARCH,),
    "multibox": (ProposalSource.MULTIBOX,),
    "union": (ProposalSource.SELECTIVE_SEARCH, ProposalSource.MULTIBOX),
}


def best_overlaps(gt_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Best IoU of each ground truth with any proposal: float64[G] (0 when no proposals)."""
    if len(gt_boxes) == 0:
        return np.zeros((0,), dtype=np.float64)
    if len(boxes) == 0:
        return np.zeros((len(gt_boxes),), dtype=np.float64)
    return box_iou(gt_boxes, boxes).max(axis=1)


@dataclass
class Coverage:
    """Coverage figures of one proposal source over a set of images."""

    num_images: int
    num_gt: int
    proposals_mean: float
    proposals_median: float
    coverage_50: float  # the paper's metric
    recall_70: float
    average_recall: float  # mean recall over IoU 0.5:0.05:0.95
    by_size: dict[str, dict[str, float]]  # bucket -> {"num_gt", "coverage_50"}


def coverage(gt: list[np.ndarray], proposals: list[np.ndarray]) -> Coverage:
    """Pooled coverage. gt and proposals: one float[N, 4] internal-xyxy array per image."""
    best = np.concatenate(
        [best_overlaps(g, p) for g, p in zip(gt, proposals, strict=True)] or [np.zeros(0)]
    )
    all_gt = np.concatenate(
        [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt] or [np.zeros((0, 4))]
    )
    counts = np.array([len(p) for p in proposals], dtype=np.float64)
    side = np.sqrt((all_gt[:, 2] - all_gt[:, 0]) * (all_gt[:, 3] - all_gt[:, 1]))
    by_size = {}
    for name, (lo, hi) in SIZE_BUCKETS.items():
        sel = (side >= lo) & (side < hi)
        by_size[name] = {"num_gt": int(sel.sum()), "coverage_50": _fraction(best[sel] >= 0.5)}
    return Coverage(
        num_images=len(gt),
        num_gt=len(best),
        proposals_mean=float(counts.mean()) if len(counts) else 0.0,
        proposals_median=float(np.median(counts)) if len(counts) else 0.0,
        coverage_50=_fraction(best >= 0.5),
        recall_70=_fraction(best >= 0.7),
        average_recall=float(np.mean([_fraction(best >= t) for t in AR_THRESHOLDS])),
        by_size=by_size,
    )


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def ranked_boxes(p: Proposals, sources: tuple[ProposalSource, ...], seed: int) -> np.ndarray:
    """Boxes of the given sources in curve order: MultiBox by score, then SS in seeded random order."""
    parts = []
    for source in sorted(sources, key=lambda s: s != ProposalSource.MULTIBOX):
        sel = p.from_source(source)
        if source == ProposalSource.MULTIBOX:
            order = np.argsort(-np.nan_to_num(sel.scores, nan=-np.inf), kind="stable")
        else:
            order = np.random.default_rng(seed).permutation(len(sel))
        parts.append(sel.boxes[order])
    return np.concatenate(parts) if parts else np.zeros((0, 4), dtype=np.float32)


def recall_curve(gt: list[np.ndarray], ranked: list[np.ndarray], counts: list[int]) -> list[float]:
    """Coverage at IoU 0.5 when each image keeps its first n ranked proposals, for n in counts."""
    return [coverage(gt, [r[:n] for r in ranked]).coverage_50 for n in counts]


def evaluate_proposals(
    records: list[ImageRecord], proposals: list[Proposals], seed: int = 0
) -> dict:
    """Coverage per source and merged, plus recall-vs-count curves."""
    gt = [r.boxes for r in records]
    report: dict = {"sources": {}, "curves": {}}
    counts = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    for name, sources in SOURCES.items():
        ranked = [ranked_boxes(p, sources, seed) for p in proposals]
        if not any(len(r) for r in ranked):
            continue
        report["sources"][name] = asdict(coverage(gt, ranked))
        upto = [n for n in counts if n <= max(len(r) for r in ranked)] + [
            max(len(r) for r in ranked)
        ]
        report["curves"][name] = {
            "num_proposals": upto,
            "coverage_50": recall_curve(gt, ranked, upto),
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{'source':<18}{'props/img':>10}{'median':>8}{'cov@0.5':>9}{'rec@0.7':>9}{'AR':>7}"
        f"{'small':>8}{'medium':>8}{'large':>8}"
    ]
    for name, c in report["sources"].items():
        size = "".join(_size_cell(c["by_size"][b]) for b in SIZE_BUCKETS)
        lines.append(
            f"{name:<18}{c['proposals_mean']:>10.1f}{c['proposals_median']:>8.0f}"
            f"{c['coverage_50']:>9.3f}{c['recall_70']:>9.3f}{c['average_recall']:>7.3f}{size}"
        )
    if report["sources"]:
        first = next(iter(report["sources"].values()))
        sizes = ", ".join(f"{b} {first['by_size'][b]['num_gt']}" for b in SIZE_BUCKETS)
        lines.append(f"ground truths: {first['num_gt']} in {first['num_images']} images ({sizes})")
    return "\n".join(lines)


def _size_cell(bucket: dict) -> str:
    """Coverage of one size bucket; "none" when the split has no objects of that size."""
    return f"{'none':>8}" if bucket["num_gt"] == 0 else f"{bucket['coverage_50']:>8.3f}"


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, curve in report["curves"].items():
        ax.plot(curve["num_proposals"], curve["coverage_50"], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("coverage at IoU 0.5")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
