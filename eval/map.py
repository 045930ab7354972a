"""ILSVRC DET mAP of a split, with the devkit's rules (``eval_detection.m``).

What it scores:
    --detections FILE   a devkit submission file ('<image_index> <class_id> <score> <xmin>
                        <ymin> <xmax> <ymax>'); only the annotations are read
    --detections DIR    a ``python -m detector.run`` output folder (its detections.jsonl), or
                        the detections.jsonl itself: images matched to the split by path
    (no --detections)   runs the detector on the split's images first (``detector.run``
                        into <--output-dir>/<split>/, so an interrupted or repeated
                        evaluation continues that run; --overwrite starts it over) and
                        writes the submission it scores to --output-dir

Examples:
    # score a submission file
    python -m eval.map --split val --detections runs/eval/val_submission.txt --json map.json
    # score what detector.run wrote (no need to run the detector again)
    python -m eval.map --split val --detections runs/detect/predict
    # the 2014 val blacklist and a devkit class list, on a real ILSVRC tree
    python -m eval.map --config ilsvrc2014 --data-root /data/ILSVRC2014 \\
        --detections val.txt --classes /data/ILSVRC2014/devkit/data/map_det.txt
    # run the detector on the split's images first (writes the submission it scores)
    python -m eval.map --split val --output-dir runs/eval --plot-pr runs/eval/pr
    # the same on 4 GPUs (or CPU processes): the ranks share the images, rank 0 scores
    torchrun --nproc_per_node 4 -m eval.map --split val --output-dir runs/eval
    # with no --data-root and data.root empty: the embedded demo dataset
    python -m eval.map --split val --detections runs/demo/val_submission.txt

Prints a per-class table sorted by AP (id, wnid, name, npos, dets, AP) for classes 1..K
(K the largest class id in the ground truth), the devkit's mAP (``nan`` with its reason
when a class has detections but no positives), the mean AP over classes with positives,
and the pycocotools AP at IoU 0.5 as a labelled cross-check. Exit status 0, or 2 with a one-line
error for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from detector.core.config import Config, ConfigError, add_config_args, load_config, parse_args
from detector.core.distributed import World

if TYPE_CHECKING:  # the heavy modules (numpy, torch) are imported after parsing: --help is fast
    from detector.core.structures import ClassList, ImageRecord
    from detector.datasets.ilsvrc import SplitBlacklist
    from eval.ilsvrc_ap import EvalResult
    from eval.submission import SubmissionArrays


class InputError(ValueError):
    """Bad input to the command; printed as one line, exit status 2."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.map",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--split", default=None, help="split to score (default: config data.val_split)"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="dataset root in the ILSVRC DET layout (default: config data.root; empty = the demo dataset)",
    )
    parser.add_argument(
        "--detections",
        default=None,
        metavar="PATH",
        help="what to score: a submission file '<image_index> <class_id> <score> <xmin> <ymin> "
        "<xmax> <ymax>', a detector.run output folder, or its detections.jsonl; without it the "
        "detector runs on the split's images",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where the detector's run (<DIR>/<split>/: log, summary) and submission file go "
        "(default: config eval.output_dir); a re-run continues that run",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the detector's run in --output-dir over instead of continuing it",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=MapOptions.max_images,
        help="run the detector on the first N images of the split only and score those (0 = all)",
    )
    parser.add_argument(
        "--blacklist",
        default=None,
        help="'<image_index> <wnid>' lines to ignore, or 'ilsvrc2014' for the shipped 2014 val "
        "blacklist (default: config data.blacklist; 'none' = no blacklist)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="map_det.txt or det_classes.tsv (default: config data.classes, then the dataset's)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="OUT",
        help="write per-class AP, npos, dets, mAP, settings here",
    )
    parser.add_argument(
        "--plot-pr",
        default=None,
        metavar="DIR",
        help="write one precision-recall PNG per class here",
    )
    check = parser.add_mutually_exclusive_group()
    check.add_argument(
        "--coco-check",
        action="store_true",
        help="run the pycocotools cross-check whatever the split's size (by default it is "
        "skipped above eval.coco_check_max_images images)",
    )
    check.add_argument(
        "--no-coco-check", action="store_true", help="skip the pycocotools cross-check"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar while the detector runs"
    )
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.core.runtime import tune_allocator
    from detector.resolve import EVAL_RUN, SCORE_FILE, ResolveError, resolve_config

    tune_allocator()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.blacklist is not None:
            cfg.data.blacklist = "" if args.blacklist == "none" else args.blacklist
        if args.classes is not None:
            cfg.data.classes = args.classes
        needs = SCORE_FILE if args.detections else EVAL_RUN
        cfg = resolve_config(cfg, data_root=args.data_root, needs=needs)
        return evaluate_split(cfg, MapOptions.from_args(args))
    except (InputError, ConfigError, ResolveError, ValueError, OSError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.filename:
            message = f"{e.filename}: {e.strerror}"
        print(f"eval.map: error: {message}", file=sys.stderr)
        return 2


@dataclass
class MapOptions:
    """What to score and what to write (the flags of ``python -m eval.map``)."""

    split: str | None = None  # None = data.val_split
    detections: str | None = (
        None  # a submission file or detector.run output; None = run the detector
    )
    output_dir: str | None = None  # None = eval.output_dir
    max_images: int = 0
    json: str | None = None
    plot_pr: str | None = None
    no_coco_check: bool = False
    no_progress: bool = False
    coco_check: bool = False  # run the cross-check above eval.coco_check_max_images too
    overwrite: bool = False  # the detector's run starts over instead of resuming

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MapOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def evaluate_split(cfg: Config, args: MapOptions) -> int:
    """Score the split of a resolved config: a submission file, or the detector's output.

    Raises:
        InputError, ValueError, OSError: bad input, naming the file (``main`` prints them).
    """
    from detector.core.paths import expand
    from detector.datasets import open_split, split_blacklist
    from eval.ilsvrc_ap import evaluate
    from eval.submission import read_submission

    split = args.split or cfg.data.val_split
    records, classes = open_split(cfg.data, split)
    blacklist = split_blacklist(cfg.data, classes, split, records)
    pairs = set(blacklist.pairs) if blacklist is not None else set()
    if args.detections:
        if args.max_images:
            raise InputError(
                "--max-images applies when running the detector, not with --detections"
            )
        submission, arrays = load_detections(Path(args.detections), records, classes, split, cfg)
    else:
        if args.max_images > 0:
            records = records[: args.max_images]
        out_dir = expand(args.output_dir or cfg.eval.output_dir)
        status = run_detector(cfg, records, split, out_dir, args)
        if status not in (0, 1) or not World.from_env().is_main:
            return status  # the run printed why; under torchrun rank 0 scores
        submission = out_dir / f"{split}_submission.txt"
        arrays = read_submission(
            submission, num_classes=len(classes), image_indices=[r.index for r in records]
        )
    if len(arrays) == 0:
        print(
            f"warning: {submission}: no detections (empty submission); every AP is 0",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    result = evaluate(records, arrays, len(classes), pairs, iou=cfg.eval.iou)
    seconds = time.perf_counter() - t0
    skip = cross_check_skipped(args, len(records), cfg.eval.coco_check_max_images)
    if skip:
        print(f"note: cross-check skipped: {skip}", file=sys.stderr)
    coco = (
        None
        if args.no_coco_check or skip
        else coco_cross_check(records, arrays, len(classes), pairs)
    )
    print_report(result, classes, split, submission, blacklist, coco, seconds)
    if args.json:
        root = Path(cfg.data.root)
        write_json(Path(args.json), result, classes, split, root, submission, blacklist, coco, skip)
    if args.plot_pr:
        from eval.plots import plot_pr_curves

        files = plot_pr_curves(result, classes, args.plot_pr)
        print(f"precision-recall plots: {len(files)} PNG files in {args.plot_pr}")
    return 0


def run_detector(
    cfg: Config, records: list[ImageRecord], split: str, out_dir: Path, args: MapOptions
) -> int:
    """Detect on every image of ``records`` with ``detector.run`` (so a re-run resumes, and
    under torchrun the ranks share the images), then write the capped submission file
    ``<out_dir>/<split>_submission.txt``. Returns ``detector.run``'s exit status."""
    missing = [r.image_id for r in records if r.path is None]
    if missing:
        raise InputError(
            f"split {split!r}: no image file for {missing[0]} ({len(missing)} missing)"
        )
    from detector.core.atomic import atomic_write_text
    from detector.run import RunOptions, detect_folder
    from eval.submission import write_submission

    image_list = out_dir / f"{split}_images.txt"
    run_dir = out_dir / split
    world = World.from_env()
    if world.is_main:  # the other ranks read rank 0's listing
        text = "".join(f"{os.path.abspath(r.path)}\n" for r in records)
        if not image_list.is_file() or image_list.read_text() != text:
            atomic_write_text(image_list, text)
        print(
            f"eval.map: running the detector on {len(records)} images of split {split} -> "
            f"{run_dir}",
            flush=True,
        )
    resume = (run_dir / "detections.jsonl").exists() and not args.overwrite
    options = RunOptions(
        images=str(image_list),
        output_dir=str(run_dir),
        resume=resume,
        overwrite=args.overwrite,
        no_progress=args.no_progress,
    )
    status = detect_folder(cfg, options)
    if status in (0, 1) and world.is_main:
        arrays = detections_from_log(run_dir / "detections.jsonl", records, split, cfg)
        path = write_submission(out_dir / f"{split}_submission.txt", arrays)
        print(f"detections: {len(arrays)} on {len(records)} images -> {path}")
    return status


def load_detections(
    path: Path, records: list[ImageRecord], classes: ClassList, split: str, cfg: Config
) -> tuple[Path, SubmissionArrays]:
    """The detections to score: a submission file, or a ``detector.run`` log (its output
    folder or the ``detections.jsonl``), capped per class as the submission writer does."""
    from eval.submission import read_submission

    if path.is_dir():
        log = path / "detections.jsonl"
        if not log.is_file():
            raise InputError(
                f"{path}: a folder without detections.jsonl (not a detector.run output)"
            )
        return log, detections_from_log(log, records, split, cfg)
    if path.is_file() and _looks_like_jsonl(path):
        return path, detections_from_log(path, records, split, cfg)
    arrays = read_submission(
        path, num_classes=len(classes), image_indices=[r.index for r in records]
    )
    return path, arrays


def _looks_like_jsonl(path: Path) -> bool:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith(b"{")
    return False


def detections_from_log(
    log: Path, records: list[ImageRecord], split: str, cfg: Config
) -> SubmissionArrays:
    """The ok records of a ``detector.run`` log whose images belong to the split.

    An image is matched by its file (the log's root joined with its name), else by its name
    without extension as the split lists it (e.g. the ImageSets name).
    """
    import os

    from detector.outputs import read_log
    from eval.submission import cap_per_class, from_records

    header, entries, _ = read_log(log)
    if header is None:
        raise InputError(
            f"{log}: no header (written by an older detector.run): score its --submission "
            "file instead, or run detector.run again"
        )
    root = header["header"].get("root", "")
    by_file = {os.path.realpath(r.path): r.index for r in records if r.path is not None}
    by_name = {r.image_id: r.index for r in records}
    pairs, outside = [], 0
    seen: set[int] = set()
    for entry in entries:
        if not entry.get("ok"):
            continue
        name = entry["image"]
        index = by_file.get(os.path.realpath(os.path.join(root, name)))
        if index is None:
            index = by_name.get(os.path.splitext(name)[0])
        if index is None:
            outside += 1
        elif index not in seen:
            seen.add(index)
            pairs.append((index, entry))
    if not pairs:
        raise InputError(
            f"{log}: none of its {len(entries)} images is in split {split!r} "
            f"(images of {header['header'].get('images')})"
        )
    if outside:
        print(f"eval.map: note: {outside} images of {log} are not in split {split}; left out")
    if len(seen) < len(records):
        print(
            f"eval.map: warning: {len(records) - len(seen)} of the {len(records)} images of "
            f"split {split} have no detections in {log} (their objects count as missed)",
            file=sys.stderr,
        )
    return cap_per_class(from_records(pairs), cfg.eval.max_per_class_total)


def cross_check_skipped(args: MapOptions, num_images: int, max_images: int) -> str | None:
    """Why the cross-check is skipped for its cost (None: it runs, or ``--no-coco-check``).

    It is opt-in above ``eval.coco_check_max_images`` images (docs/DECISIONS.md, "Evaluation")."""
    if args.no_coco_check or args.coco_check or num_images <= max_images:
        return None
    return (
        f"{num_images} images > eval.coco_check_max_images {max_images} (about 2 s per "
        "1,000 images with faster-coco-eval, 6 s with pycocotools); --coco-check runs it"
    )


def coco_cross_check(
    records: list[ImageRecord], arrays: SubmissionArrays, k: int, pairs: set[tuple[int, int]]
):
    from eval.coco_check import coco_ap50

    return coco_ap50(records, arrays, k, pairs)


def print_report(
    result: EvalResult,
    classes: ClassList,
    split: str,
    submission: Path,
    blacklist: SplitBlacklist | None,
    coco,
    seconds: float,
) -> None:
    s = result.settings
    print(
        f"ILSVRC DET evaluation (devkit eval_detection.m rules): split {split}, "
        f"{s['num_images']} images, {s['num_detections']} detections from {submission}"
    )
    if blacklist is not None:
        how = (
            f", mapped through the image names of {blacklist.mapped_through}"
            if blacklist.mapped_through
            else ""
        )
        print(
            f"blacklist: {blacklist.path}: {len(blacklist.pairs)} of its "
            f"{blacklist.in_file} image/class pairs on this split's images{how}; "
            f"{s['num_ignored_detections']} detections and {s['num_ignored_ground_truths']} "
            "objects ignored"
        )
    print(f"{'id':>4}  {'wnid':<10} {'name':<24} {'npos':>6} {'dets':>8} {'AP':>7}")
    ap = result.ap
    for c in sorted(range(1, result.num_classes + 1), key=lambda c: _by_ap(ap[c - 1], c)):
        value = "nan" if math.isnan(ap[c - 1]) else f"{100 * ap[c - 1]:.2f}%"
        print(
            f"{c:>4}  {classes.wnids[c - 1]:<10.10} {classes.names[c - 1]:<24.24} "
            f"{result.npos[c - 1]:>6} {result.num_dets[c - 1]:>8} {value:>7}"
        )
    for line in headline(result, seconds):
        print(line)
    if coco is not None:
        from eval.coco_check import label

        print(f"{label(coco.backend)}: {100 * coco.mAP:.2f}%")


def headline(result: EvalResult, seconds: float | None = None) -> list[str]:
    """The devkit's mAP (NaN printed as ``nan`` with its reason), the mean over classes
    with positives beside it, and notes on classes without positives and above K."""
    k = result.num_classes
    timing = f"; scored in {seconds:.2f} s" if seconds is not None else ""
    reason = f": {result.mAP_reason}" if result.mAP_reason else ""
    value = "nan" if math.isnan(result.mAP) else f"{100 * result.mAP:.2f}%"
    lines = [f"mAP: {value} (devkit: mean over classes 1..{k}{reason}{timing})"]
    present = int((result.npos > 0).sum())
    with_pos = result.mAP_with_positives
    with_text = "nan" if math.isnan(with_pos) else f"{100 * with_pos:.2f}%"
    lines.append(f"mean AP over the {present} classes with positives: {with_text}")
    if result.degenerate:
        ids = ", ".join(str(c) for c in result.degenerate[:30])
        more = f", ... ({len(result.degenerate)} in all)" if len(result.degenerate) > 30 else ""
        lines.append(
            f"classes without positives (AP 0 with no detection, nan with any): {ids}{more}"
        )
    above = result.settings.get("num_detections_above_k", 0)
    if above:
        lines.append(
            f"note: {above} detections of classes above K = {k} (the largest class id in the "
            "ground truth) are not evaluated"
        )
    return lines


def _by_ap(ap: float, c: int) -> tuple:
    """Sort key: AP descending, NaN last, then class id."""
    return (bool(math.isnan(ap)), -(0.0 if math.isnan(ap) else ap), c)


def write_json(
    out: Path,
    result: EvalResult,
    classes: ClassList,
    split: str,
    root: Path,
    submission: Path,
    blacklist: SplitBlacklist | None,
    coco,
    coco_skipped: str | None = None,
) -> None:
    report = result.to_json(classes)
    report["settings"].update(
        split=split,
        data_root=str(root),
        detections=str(submission),
        blacklist=str(blacklist.path) if blacklist else None,
        blacklist_pairs_in_file=blacklist.in_file if blacklist else 0,
        blacklist_mapped_through=str(blacklist.mapped_through)
        if blacklist and blacklist.mapped_through
        else None,
    )
    if coco_skipped:
        report["coco_check"] = {"skipped": coco_skipped}
    if coco is not None:
        report["coco_check"] = {
            "label": "pycocotools AP@0.5, cross-check only",
            "backend": coco.backend,
            "mAP": coco.mAP,
            "ap": [None if v != v else float(v) for v in coco.ap],  # NaN -> null
        }
    from detector.core.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"json: {out}")


if __name__ == "__main__":
    sys.exit(main())
