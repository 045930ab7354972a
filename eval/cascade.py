"""Tune ``inference.cascade_threshold`` on a validation split: ``python -m eval.cascade``.

Examples::

    python -m eval.cascade                                   # demo val, the demo models
    python -m eval.cascade --split val1 --config ilsvrc2014 --data-root /data/ILSVRC2014
    python -m eval.cascade --images photos/ --keep 0.995    # unannotated photos: no mAP
    python -m eval.cascade --thresholds 0,0.01,0.05,0.1 inference.dedup_iou=0.95

Every proposal of every image is scored once by every member, keeping member 0's softmax
and the full ensemble's mean of each crop (``Ensemble.score_first_and_mean``). A cascade at
threshold t (members 1..N-1 score only the crops whose member-0 foreground probability
1 - p_background is >= t, the others keep member 0's probabilities) then needs no CNN:
its probabilities are ``where(fg0 >= t, mean, first)`` (``detector.ensemble.cascade_probs``),
exactly what ``Ensemble(cascade_threshold=t)`` gives, and its detections are the
detector's own NMS of them (``Detector.nms``; ``inference.dedup_iou`` is honoured).

For each threshold of the grid (0, the full ensemble and the reference, is always in it)
the table shows: the share of crops that reach members 1..N-1; the CNN work relative to the
full ensemble, (1 + share * (N - 1)) / N; the share of the full ensemble's detections
scoring >= --min-score that the cascade keeps (a cascade detection of the same class, IoU
>= 0.5, score >= --min-score, in the same image: ``eval.agreement``); and, on an annotated
split, the devkit's mAP (``eval.ilsvrc_ap``). The recommendation is the largest threshold
whose kept share is >= --keep. A JSON summary is written atomically to --output.

An image that cannot be read is reported on one line and left out; the rest go on (on a
split its objects then count as missed in every row). Exit status: 0, 1 when some images
failed (the summary is written all the same), 2 usage, config, model or input errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.core.config import (
    ConfigError,
    DefaultsHelpFormatter,
    add_config_args,
    load_config,
    parse_args,
)
from detector.core.messages import one_line

if TYPE_CHECKING:  # numpy and torch are imported after parsing: --help is fast
    import numpy as np

    from detector.core.structures import Detections, ImageRecord

DEFAULT_THRESHOLDS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
MATCH_IOU = 0.5  # a kept detection overlaps the full ensemble's at IoU >= this

OK, FAILED, USAGE = 0, 1, 2


class InputError(ValueError):
    """Bad input to the command; printed as one line, exit status 2."""


def thresholds_arg(text: str) -> list[float]:
    """``"0,0.01,0.05"`` -> the sorted grid, 0 added (the reference); each in [0, 1]."""
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    bad = [v for v in values if not 0 <= v <= 1]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"thresholds must be numbers in [0, 1], got {text!r}")
    return sorted({0.0, *values})


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.cascade",
        description=__doc__,
        formatter_class=DefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--split", default=None, help="annotated split to tune on (default: config data.val_split)"
    )
    source.add_argument(
        "--images",
        default=None,
        metavar="PATH",
        help="a folder of images (or an image list, as detector.run --images): no annotations, "
        "so no mAP",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="dataset root for --split (default: config data.root; empty = the demo dataset)",
    )
    parser.add_argument(
        "--thresholds",
        type=thresholds_arg,
        default=list(DEFAULT_THRESHOLDS),
        metavar="T,T,...",
        help="cascade thresholds to try, comma-separated; 0 is always added (default: "
        f"{','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})",
    )
    parser.add_argument(
        "--keep",
        type=float,
        default=0.99,
        help="recommend the largest threshold keeping at least this share of the full "
        "ensemble's detections",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.1,
        help="the detections compared: those scoring at least this",
    )
    parser.add_argument(
        "--max-images", type=int, default=0, metavar="N", help="the first N images only (0 = all)"
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="JSON",
        help="the summary (default: runs/cascade/<split or folder name>.json)",
    )
    parser.add_argument("--device", default=None, help="device (default: config inference.device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.build import ModelSetupError
    from detector.core.io import ImageListError
    from detector.core.runtime import tune_allocator
    from detector.resolve import EVAL_RUN, RUN_LIST, ResolveError, resolve_config

    tune_allocator()
    try:
        if not 0 <= args.keep <= 1:
            raise InputError(f"--keep must be in [0, 1], got {args.keep}")
        cfg = load_config(args.config, args.overrides)
        needs = EVAL_RUN if args.images is None else RUN_LIST  # a list: auto may be int8
        data_root = args.data_root if args.images is None else None
        cfg = resolve_config(cfg, data_root=data_root, device=args.device, needs=needs)
        return tune(cfg, args)
    except (
        InputError,
        ConfigError,
        ResolveError,
        ModelSetupError,
        ImageListError,
        ValueError,
        OSError,
        KeyError,
    ) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else one_line(e)
        if isinstance(e, OSError) and e.filename:
            message = f"{e.filename}: {e.strerror}"
        print(f"eval.cascade: error: {message}", file=sys.stderr)
        return USAGE


# ---- the images -----------------------------------------------------------------------------


@dataclass
class Source:
    """What is scored: the images (path, name) and, on a split, its records and classes."""

    label: str  # the split or the folder's name: names the default output
    images: list[tuple[Path | None, str]]
    records: list[ImageRecord] | None = None  # None: unannotated (--images)
    num_classes: int = 0
    blacklist: set[tuple[int, int]] = field(default_factory=set)
    inputs: dict[str, str] = field(default_factory=dict)  # real path -> what it is


def open_source(cfg, args: argparse.Namespace) -> Source:
    """The images of ``--images`` (``detector.core.io.find_images``, as ``detector.run``) or
    of the split (``detector.datasets.open_split``, as ``eval.map``)."""
    if args.images is not None:
        from detector.core.io import find_images

        listing = find_images(args.images)
        pairs = list(zip(listing.images, listing.names, strict=True))
        real = Path(os.path.realpath(args.images))
        label = real.name if listing.kind == "folder" else real.stem
        source = Source(label or "images", pairs)
        if listing.kind == "list":
            source.inputs[os.path.realpath(args.images)] = "the image list (--images)"
    else:
        from detector.datasets import open_split, split_blacklist

        split = args.split or cfg.data.val_split
        records, classes = open_split(cfg.data, split)
        blacklist = split_blacklist(cfg.data, classes, split, records)
        pairs = [(r.path, r.image_id) for r in records]
        source = Source(split, pairs, records, len(classes))
        source.blacklist = set(blacklist.pairs) if blacklist is not None else set()
        source.inputs[os.path.realpath(cfg.data.root)] = "the dataset (data.root)"
    if args.max_images > 0:
        source.images = source.images[: args.max_images]
        if source.records is not None:
            source.records = source.records[: args.max_images]
    if not source.images:
        raise InputError(f"{args.images or source.label}: no images")
    source.inputs.update({os.path.realpath(p): "one of the images" for p, _ in pairs if p})
    named = {"the config file": cfg.source, "the MultiBox checkpoint": cfg.proposals.multibox.checkpoint}  # fmt: skip
    named.update({f"checkpoint {p}": p for p in cfg.model.checkpoints})
    source.inputs.update({os.path.realpath(p): what for what, p in named.items() if p})
    return source


def check_output(path: Path, inputs: dict[str, str]) -> None:
    """Refuse an output that is a folder, an input, or inside the dataset tree."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        raise InputError(f"{path}: --output is a folder, not a file")
    if real in inputs:
        raise InputError(f"{path}: --output would overwrite {inputs[real]}")
    for folder, what in inputs.items():
        if what == "the dataset (data.root)" and real.startswith(folder.rstrip(os.sep) + os.sep):
            raise InputError(f"{path}: --output is inside {what} {folder}; write it elsewhere")


# ---- scoring once, then every threshold -----------------------------------------------------


@dataclass
class ImageSweep:
    """One image at every threshold of the grid: crops scored, how many reach members 1..,
    the detections."""

    name: str
    position: int  # in the source's list (a split: its record)
    proposals: int
    crops: int
    reached: list[int]
    detections: list[Detections]


def sweep_image(
    detector, image: np.ndarray, boxes: np.ndarray, thresholds: Sequence[float]
) -> tuple[int, list[int], list[Detections]]:
    """Score the proposals ``boxes`` of ``image`` once with every member, then a cascade at
    each threshold: (crops scored, crops reaching members 1.. per threshold, detections per
    threshold)."""
    from detector.ensemble import cascade_probs, cascade_reaches

    scored, inverse = detector.representatives(boxes)
    regions = detector.scorer.regions(image, boxes[scored])
    first, mean = detector.scorer.score_first_and_mean(regions)
    reached, detections = [], []
    for t in thresholds:
        reached.append(int(cascade_reaches(first, t).sum()))
        detections.append(detector.nms(boxes, cascade_probs(first, mean, t)[inverse]))
    return len(scored), reached, detections


def score_source(detector, source: Source, thresholds: Sequence[float], progress: bool):
    """:func:`sweep_image` on every image; a bad one is reported on one line and left out.
    Returns (the sweeps, the errors, the seconds spent)."""
    from tqdm import tqdm

    from detector.run import make_record

    sweeps, errors = [], []
    started = time.perf_counter()
    bar = tqdm(total=len(source.images), unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for position, (path, name) in enumerate(source.images):
            try:
                if path is None:
                    raise InputError(f"{name}: no image file")
                image = detector.load(path)
                boxes = detector.proposer(image).boxes
                crops, reached, dets = sweep_image(detector, image, boxes, thresholds)
                sweeps.append(ImageSweep(name, position, len(boxes), crops, reached, dets))
            except Exception as e:  # noqa: BLE001 - one bad image never stops the rest
                message = make_record(name, str(path), e)["error"]
                errors.append(message)
                bar.write(f"eval.cascade: failed: {message}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
    return sweeps, errors, time.perf_counter() - started


def summarize(
    sweeps: Sequence[ImageSweep],
    thresholds: Sequence[float],
    num_members: int,
    *,
    min_score: float,
    map_of=None,
) -> list[dict[str, Any]]:
    """One row per threshold: reach share, CNN work, kept share against threshold 0 (the
    full ensemble; ``thresholds[0]`` must be 0), and ``map_of(detections per image)`` when
    given (the mAP; None without annotations)."""
    from eval.agreement import detections_kept

    if not thresholds or thresholds[0] != 0:
        raise ValueError("the grid must start at 0 (the full ensemble, the reference)")
    crops = sum(s.crops for s in sweeps)
    reference = [s.detections[0] for s in sweeps]
    rows = []
    for i, t in enumerate(thresholds):
        share = sum(s.reached[i] for s in sweeps) / crops if crops else 1.0
        dets = [s.detections[i] for s in sweeps]
        kept, total = detections_kept(reference, dets, min_score=min_score, iou=MATCH_IOU)
        rows.append(
            {
                "threshold": float(t),
                "reach_share": share,
                "cnn_work": (1 + share * (num_members - 1)) / num_members,
                "kept_share": kept / total if total else 1.0,
                "kept": kept,
                "compared": total,
                "detections": sum(len(d) for d in dets),
                "mAP": map_of(dets) if map_of is not None else None,
            }
        )
    return rows


def recommend(rows: Sequence[dict[str, Any]], keep: float) -> float | None:
    """The largest threshold whose kept share is at least ``keep`` (None: none is)."""
    good = [r["threshold"] for r in rows if r["kept_share"] >= keep]
    return max(good) if good else None


def split_map(source: Source, sweeps: Sequence[ImageSweep], cfg):
    """``map_of(detections per sweep) -> mAP`` on the split's annotations, scored in memory
    as ``eval.map`` scores a run (capped per class, the devkit's rules); None without
    annotations (``--images``, or a split without a single object)."""
    records = source.records
    if records is None or not any(len(r.boxes) for r in records):
        return None
    from eval.ilsvrc_ap import evaluate
    from eval.submission import cap_per_class, from_detections

    indices = [records[s.position].index for s in sweeps]

    def map_of(detections: Sequence[Detections]) -> float:
        pairs = zip(indices, detections, strict=True)
        arrays = cap_per_class(from_detections(pairs), cfg.eval.max_per_class_total)
        result = evaluate(records, arrays, source.num_classes, source.blacklist, iou=cfg.eval.iou)
        return float(result.mAP)

    return map_of


# ---- the command ----------------------------------------------------------------------------


def tune(cfg, args: argparse.Namespace) -> int:
    """Score the source once, sweep the grid, print the table and the recommendation, write
    the summary. Raises InputError, ModelSetupError, ... (``main`` prints them)."""
    from detector.detector import Detector

    source = open_source(cfg, args)
    output = Path(args.output or Path("runs") / "cascade" / f"{source.label}.json")
    check_output(output, source.inputs)
    if cfg.inference.cascade_threshold > 0:
        print(
            f"eval.cascade: note: inference.cascade_threshold={cfg.inference.cascade_threshold:g} "
            "is not used here: every member scores every crop, the grid is simulated",
            file=sys.stderr,
        )
    detector = Detector.from_config(cfg)
    if detector.heads is not None:
        raise InputError(
            "eval.cascade tunes the softmax scorer: turn inference.box_regression off and "
            "use inference.scorer=softmax"
        )
    if detector.scorer.needs_calibration:  # int8: calibrated as detect_many calibrates
        paths = [p for p, _ in source.images if p is not None]
        detector.calibrate(paths[: cfg.inference.calibration_images])
    thresholds = list(args.thresholds)
    num_members = len(detector.scorer)
    where = f"split {source.label}" if source.records is not None else str(args.images)
    print(
        f"eval.cascade: {len(source.images)} images of {where}, {num_members} members, "
        f"thresholds {', '.join(f'{t:g}' for t in thresholds)}",
        flush=True,
    )
    sweeps, errors, seconds = score_source(
        detector, source, thresholds, progress=not args.no_progress
    )
    if not sweeps:
        raise InputError(f"no image of {where} could be scored ({len(errors)} failed)")
    map_of = split_map(source, sweeps, cfg)
    rows = summarize(sweeps, thresholds, num_members, min_score=args.min_score, map_of=map_of)
    best = recommend(rows, args.keep)
    print_table(rows, args.min_score, num_members)
    print(recommendation_line(rows, best, args.keep, args.min_score))
    summary = {
        "settings": {
            "config": cfg.source,
            "split": source.label if source.records is not None else None,
            "images": str(args.images) if args.images is not None else None,
            "data_root": cfg.data.root if source.records is not None else None,
            "num_images": len(source.images),
            "num_scored_images": len(sweeps),
            "members": num_members,
            "crops": sum(s.crops for s in sweeps),
            "proposals": sum(s.proposals for s in sweeps),
            "dedup_iou": cfg.inference.dedup_iou,
            "precision": detector.scorer.precision,
            "device": str(detector.scorer.device),
            "min_score": args.min_score,
            "match_iou": MATCH_IOU,
            "keep": args.keep,
            "thresholds": thresholds,
            "seconds": round(seconds, 2),
        },
        "rows": [{k: _json_number(v) for k, v in r.items()} for r in rows],
        "recommended_threshold": best,
        "errors": errors,
    }
    from detector.core.atomic import atomic_write_text

    atomic_write_text(output, json.dumps(summary, indent=1))
    print(f"json: {output}")
    return FAILED if errors else OK


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def print_table(rows: Sequence[dict[str, Any]], min_score: float, num_members: int) -> None:
    print(
        f"{'threshold':>9}  {'reach':>6}  {'CNN work':>8}  {f'kept (>= {min_score:g})':>22}  "
        f"{'mAP':>7}  {'dets':>6}"
    )
    for r in rows:
        kept = f"{r['kept_share']:.4f} ({r['kept']}/{r['compared']})"
        m = r["mAP"]
        value = "-" if m is None else ("nan" if math.isnan(m) else f"{100 * m:.2f}%")
        print(
            f"{r['threshold']:>9g}  {r['reach_share']:>6.3f}  {r['cnn_work']:>8.3f}  "
            f"{kept:>22}  {value:>7}  {r['detections']:>6}"
        )
    print(
        f"reach: share of crops scored by members 1..{num_members - 1}; CNN work: "
        "(1 + reach * (N - 1)) / N of the full ensemble's; kept: the full ensemble's "
        f"detections scoring >= {min_score:g} that the cascade keeps (same class, IoU >= "
        f"{MATCH_IOU:g}, score >= {min_score:g})"
    )


def recommendation_line(
    rows: Sequence[dict[str, Any]], best: float | None, keep: float, min_score: float
) -> str:
    if best is None:
        return (
            f"no threshold keeps >= {keep:g} of the full ensemble's detections: leave "
            "inference.cascade_threshold=0 (off)"
        )
    row = next(r for r in rows if r["threshold"] == best)
    if best == 0:
        return (
            f"set inference.cascade_threshold=0 (off): no threshold > 0 of the grid keeps "
            f">= {keep:g} of the full ensemble's detections scoring >= {min_score:g}"
        )
    return (
        f"set inference.cascade_threshold={best:g} (largest threshold keeping >= {keep:g} of "
        f"the full ensemble's detections scoring >= {min_score:g}: kept {row['kept_share']:.4f}, "
        f"{100 * row['reach_share']:.1f}% of crops reach members 1.., CNN work "
        f"{row['cnn_work']:.3f} of the full ensemble's)"
    )


if __name__ == "__main__":
    sys.exit(main())
