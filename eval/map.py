"""ILSVRC DET mAP of a split, with the devkit's rules (``eval_detection.m``).

Examples:
    # score a submission file (only the annotations are read)
    python -m eval.map --split val --detections runs/eval/val_submission.txt --json map.json
    # the 2014 val blacklist and a devkit class list, on a real ILSVRC tree
    python -m eval.map --config ilsvrc2014 --data-root /data/ILSVRC2014 \\
        --detections val.txt --classes /data/ILSVRC2014/devkit/data/map_det.txt
    # run the detector on the split's images first (writes the submission it scores)
    python -m eval.map --split val --output-dir runs/eval --plot-pr runs/eval/pr
    # with no --data-root and data.root empty: the embedded demo dataset
    python -m eval.map --split val --detections runs/demo/val_submission.txt

Prints a per-class table sorted by AP (id, wnid, name, npos, dets, AP), the mAP, and the
pycocotools AP at IoU 0.5 as a labelled cross-check. Exit status 0, or 2 with a one-line
error for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from detector.config import Config, ConfigError, add_config_args, load_config
from detector.datasets.classes import DATA_DIR, load_classes
from detector.paths import expand
from detector.runtime import tune_allocator
from detector.structures import ClassList, ImageRecord
from eval.ilsvrc_ap import EvalResult, evaluate
from eval.submission import (
    SubmissionArrays,
    cap_per_class,
    from_detections,
    read_submission,
    write_submission,
)

SHIPPED_BLACKLISTS = {"ilsvrc2014": DATA_DIR / "ilsvrc2014_det_val_blacklist.txt"}


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
        help="submission file '<image_index> <class_id> <score> <xmin> <ymin> <xmax> <ymax>' to score; "
        "without it the detector runs on the split's images",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where the detector's submission file is written (default: config eval.output_dir)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=0,
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
    parser.add_argument(
        "--no-coco-check", action="store_true", help="skip the pycocotools cross-check"
    )
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    tune_allocator()
    try:
        cfg = load_config(args.config, args.overrides)
        return run(args, cfg)
    except (InputError, ConfigError, ValueError, OSError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.filename:
            message = f"{e.filename}: {e.strerror}"
        print(f"eval.map: error: {message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, cfg: Config) -> int:
    split = args.split or cfg.data.val_split
    root, demo = data_root(args.data_root, cfg)
    records, classes = load_split(cfg, root, split, args.classes)
    blacklist_path = resolve_blacklist(args.blacklist, cfg, demo)
    pairs = read_blacklist_pairs(blacklist_path, classes)
    if args.detections:
        if args.max_images:
            raise InputError(
                "--max-images applies when running the detector, not with --detections"
            )
        submission = Path(args.detections)
        indices = [r.index for r in records]
        arrays = read_submission(submission, num_classes=len(classes), image_indices=indices)
    else:
        if args.max_images > 0:
            records = records[: args.max_images]
        out_dir = expand(args.output_dir or cfg.eval.output_dir)
        submission = run_detector(cfg, records, split, out_dir)
        arrays = read_submission(submission, len(classes), [r.index for r in records])
    t0 = time.perf_counter()
    result = evaluate(records, arrays, len(classes), pairs, iou=cfg.eval.iou)
    seconds = time.perf_counter() - t0
    coco = None if args.no_coco_check else coco_cross_check(records, arrays, len(classes), pairs)
    print_report(result, classes, split, submission, blacklist_path, coco, seconds)
    if args.json:
        write_json(Path(args.json), result, classes, split, root, submission, blacklist_path, coco)
    if args.plot_pr:
        from eval.plots import plot_pr_curves

        files = plot_pr_curves(result, classes, args.plot_pr)
        print(f"precision-recall plots: {len(files)} PNG files in {args.plot_pr}")
    return 0


def data_root(arg: str | None, cfg: Config) -> tuple[Path, bool]:
    """The dataset root, and whether it is the embedded demo (no root given anywhere)."""
    root = arg if arg is not None else cfg.data.root
    if root:
        path = expand(root)
        if not path.is_dir():
            raise InputError(f"{path}: data root is not a directory")
        return path, False
    try:
        from detector.datasets.demo import ensure_demo_dataset
    except ImportError as e:
        raise InputError(f"no --data-root and the demo dataset is unavailable ({e})") from None
    return Path(ensure_demo_dataset(cfg)), True


def load_split(
    cfg: Config, root: Path, split: str, classes_arg: str | None
) -> tuple[list[ImageRecord], ClassList]:
    """All records of the split (annotations only) and the class list they are labelled with."""
    classes_file = classes_arg if classes_arg is not None else cfg.data.classes
    classes = load_classes(expand(classes_file)) if classes_file else None
    fmt = cfg.data.format
    if fmt == "ilsvrc":
        from detector.datasets.ilsvrc import IlsvrcDet

        ds = IlsvrcDet(root, split, classes)
    elif fmt == "voc":
        from detector.datasets.voc import VocDataset

        ds = VocDataset(root, split, classes)
    elif fmt == "coco":
        from detector.datasets.coco import CocoDataset

        if not cfg.data.coco_annotations:
            raise InputError("data.format=coco needs data.coco_annotations (the instances JSON)")
        ds = CocoDataset(expand(cfg.data.coco_annotations), root, classes)
    else:
        raise InputError(f"data.format {fmt!r} is not one of ilsvrc, voc, coco")
    return list(ds), ds.classes


def resolve_blacklist(arg: str | None, cfg: Config, demo: bool) -> Path | None:
    """``--blacklist`` or ``data.blacklist``; a shipped name maps to its file."""
    value = arg if arg is not None else cfg.data.blacklist
    if not value or value == "none":
        return None
    if value in SHIPPED_BLACKLISTS:
        if demo:
            # the official list names ILSVRC val images; on the demo it would hit random ones
            print(f"note: blacklist {value!r} ignored on the demo dataset", file=sys.stderr)
            return None
        return SHIPPED_BLACKLISTS[value]
    path = expand(value)
    if not path.is_file():
        raise InputError(f"{path}: blacklist file not found")
    return path


def read_blacklist_pairs(path: Path | None, classes: ClassList) -> set[tuple[int, int]]:
    if path is None:
        return set()
    from detector.datasets.ilsvrc import read_blacklist

    return read_blacklist(path, classes)


def run_detector(cfg: Config, records: list[ImageRecord], split: str, out_dir: Path) -> Path:
    """Detect on every image of ``records``, write the capped submission file, return its path."""
    try:
        from detector.detector import Detector

        detector = Detector.from_config(cfg)
    except ImportError as e:
        raise InputError(
            f"the detector is unavailable ({e}); score a file with --detections"
        ) from None
    missing = [r.image_id for r in records if r.path is None]
    if missing:
        raise InputError(
            f"split {split!r}: no image file for {missing[0]} ({len(missing)} missing)"
        )
    by_path = {str(r.path): r.index for r in records}
    items = []
    for item, result in _detect_all(detector, [str(r.path) for r in records], cfg):
        if isinstance(result, Exception):
            # one unreadable image loses its detections, never the run
            print(f"warning: {item}: {result}", file=sys.stderr)
            continue
        items.append((by_path[str(item)], result))
    arrays = cap_per_class(from_detections(items), cfg.eval.max_per_class_total)
    path = write_submission(out_dir / f"{split}_submission.txt", arrays)
    print(f"detections: {len(arrays)} on {len(records)} images -> {path}")
    return path


def _detect_all(detector, paths: list[str], cfg: Config):
    if hasattr(detector, "detect_many"):
        yield from detector.detect_many(paths, workers=cfg.proposals.selective_search.workers)
        return
    for p in paths:
        try:
            yield p, detector(p)
        except Exception as e:  # noqa: BLE001 - reported per image
            yield p, e


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
    blacklist: Path | None,
    coco,
    seconds: float,
) -> None:
    s = result.settings
    print(
        f"ILSVRC DET evaluation (devkit eval_detection.m rules): split {split}, "
        f"{s['num_images']} images, {s['num_detections']} detections from {submission}"
    )
    if blacklist is not None:
        print(
            f"blacklist: {blacklist} ({s['blacklist_pairs']} image/class pairs; "
            f"{s['num_ignored_detections']} detections and {s['num_ignored_ground_truths']} objects ignored)"
        )
    print(f"{'id':>4}  {'wnid':<10} {'name':<24} {'npos':>6} {'dets':>8} {'AP':>7}")
    for c in sorted(range(1, result.num_classes + 1), key=lambda c: (-result.ap[c - 1], c)):
        print(
            f"{c:>4}  {classes.wnids[c - 1]:<10.10} {classes.names[c - 1]:<24.24} "
            f"{result.npos[c - 1]:>6} {result.num_dets[c - 1]:>8} {100 * result.ap[c - 1]:>6.2f}%"
        )
    print(
        f"mAP: {100 * result.mAP:.2f}% over {result.num_classes} classes (scored in {seconds:.2f} s)"
    )
    if result.degenerate:
        present = result.ap[result.npos > 0]
        ids = ", ".join(str(c) for c in result.degenerate[:30])
        more = f", ... ({len(result.degenerate)} in all)" if len(result.degenerate) > 30 else ""
        print(f"degenerate classes (no positives; AP counted as 0): {ids}{more}")
        if len(present):
            print(
                f"mean AP over the {len(present)} classes with positives: {100 * present.mean():.2f}%"
            )
    if coco is not None:
        from eval.coco_check import LABEL

        print(f"{LABEL}: {100 * coco.mAP:.2f}%")


def write_json(
    out: Path,
    result: EvalResult,
    classes: ClassList,
    split: str,
    root: Path,
    submission: Path,
    blacklist: Path | None,
    coco,
) -> None:
    report = result.to_json(classes)
    report["settings"].update(
        split=split,
        data_root=str(root),
        detections=str(submission),
        blacklist=str(blacklist) if blacklist else None,
    )
    if coco is not None:
        report["coco_check"] = {
            "label": "pycocotools AP@0.5, cross-check only",
            "mAP": coco.mAP,
            "ap": [None if v != v else float(v) for v in coco.ap],  # NaN -> null
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"json: {out}")


if __name__ == "__main__":
    sys.exit(main())
