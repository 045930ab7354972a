"""Detect objects in a folder of images: ``python -m detector.run --images DIR``.

Examples::

    python -m detector.run --images photos/                      # the demo models, demo config
    python -m detector.run --images photos/ --recursive --save-vis runs/detect/vis
    python -m detector.run --config ilsvrc2014 --images ILSVRC2013_DET/Data/DET/val \\
        --image-set ILSVRC2013_DET/ImageSets/DET/val.txt --submission runs/val/sub.txt \\
        --output-dir runs/val --workers 2 inference.precision=bf16
    python -m detector.run --images photos/ --resume              # after an interruption
    python -m detector.run --images photos/ --checkpoints m0.safetensors m1.safetensors inference.nms_iou=0.4

One JSON record per image is appended to ``<output-dir>/detections.jsonl`` as soon as the
image is done (format: ``detector.outputs``), so an interrupted run loses at most the image
in flight. ``--resume`` keeps the images already recorded ok, **retries the ones that
failed** (their old records are dropped, so every image has exactly one record), and
drops a half-written last line. Without ``--resume`` or ``--overwrite`` an existing log is
an error. COCO results and the ILSVRC submission are written at the end, atomically, from
the whole log. A bad image (corrupt, truncated, empty, not an image, too many pixels) is
reported on one line and never stops the run.

Exit status: 0 every image succeeded, 1 some failed (listed in the summary), 2 usage,
config or model errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from detector.core.atomic import atomic_write_text
from detector.core.config import Config, ConfigError, add_config_args, load_config
from detector.core.io import ImageLoadError, list_images, load_image
from detector.core.runtime import tune_allocator
from detector.outputs import (
    OutputError,
    append_record,
    coco_image_ids,
    coco_results,
    repair_jsonl,
)
from detector.resolve import Needs, ResolveError, resolve_config
from eval.submission import cap_per_class, from_records, write_submission

STAGES = ("load", "propose", "warp", "score", "nms", "wait")


class UsageError(ValueError):
    """A bad flag combination or input file (exit status 2)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m detector.run",
        description="Detect objects in every image of a folder (R-CNN with a GoogLeNet ensemble).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("One JSON", 1)[0],
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--recursive", action="store_true", help="also images in subfolders")
    p.add_argument(
        "--output-dir",
        default=RunOptions.output_dir,
        metavar="DIR",
        help=f"where detections.jsonl and summary.json go (default: {RunOptions.output_dir})",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="the JSON-lines log (default: <output-dir>/detections.jsonl)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing log: skip images recorded ok, retry failed ones",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing log")
    p.add_argument("--coco-results", metavar="FILE", help="also write COCO results JSON")
    p.add_argument(
        "--submission", metavar="FILE", help="also write an ILSVRC devkit submission file"
    )
    p.add_argument(
        "--image-set",
        metavar="FILE",
        help="ILSVRC ImageSets file ('<name> <index>'): image indices for --submission and "
        "--coco-results (default: 1-based position in the sorted image list)",
    )
    p.add_argument("--save-vis", metavar="DIR", help="write a JPEG with drawn boxes per image")
    p.add_argument(
        "--vis-top",
        type=int,
        default=RunOptions.vis_top,
        metavar="N",
        help=f"boxes drawn per image (default {RunOptions.vis_top})",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="PATH",
        help="ensemble member checkpoints (sets model.checkpoints and model.members)",
    )
    p.add_argument("--multibox", metavar="PATH", help="MultiBox checkpoint (enables MultiBox)")
    p.add_argument("--device", help="inference.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--score-threshold", type=float, metavar="P", help="inference.score_threshold")
    p.add_argument(
        "--max-detections", type=int, metavar="N", help="inference.max_detections (0 = no limit)"
    )
    p.add_argument(
        "--chunk-size", type=int, metavar="N", help="inference.chunk_size: crops per forward pass"
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="threads computing proposals ahead of scoring "
        "(default: proposals.selective_search.workers; 0 = all cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    return p


@dataclass
class RunOptions:
    """What to detect on and where the results go (the flags of ``python -m detector.run``)."""

    images: str
    recursive: bool = False
    output_dir: str = "runs/detect"
    output: str | None = None  # the log; None = <output_dir>/detections.jsonl
    resume: bool = False
    overwrite: bool = False
    coco_results: str | None = None
    submission: str | None = None
    image_set: str | None = None
    save_vis: str | None = None
    vis_top: int = 20
    no_progress: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    tune_allocator()
    try:
        cfg = build_config(args)
    except (ConfigError, ResolveError, UsageError) as e:
        print(f"detector.run: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return detect_folder(cfg, RunOptions.from_args(args))


def detect_folder(cfg: Config, args: RunOptions) -> int:
    """Detect on every image of ``args.images`` with a resolved config; returns the exit status."""
    try:
        root = Path(args.images)
        images = list_images(root, recursive=args.recursive)
        names = [p.relative_to(root).as_posix() for p in images]
        indices = image_indices(names, args.image_set)
        log = Path(args.output) if args.output else Path(args.output_dir) / "detections.jsonl"
        existing = check_log(log, resume=args.resume, overwrite=args.overwrite)
    except (UsageError, OutputError, OSError) as e:
        print(f"detector.run: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not images:
        print(f"detector.run: warning: no images found in {root}", file=sys.stderr)
    records = existing or {}
    todo = [(p, n) for p, n in zip(images, names, strict=True) if n not in records]
    started = time.perf_counter()
    status, loop_seconds = 0, 0.0
    if todo:
        status, loop_seconds = detect_all(cfg, args, todo, log, records, fresh=existing is None)
        if status == 2:
            return 2
    elif existing is None:
        os.close(start_log(log, fresh=True))
    if status == 130:
        print(f"detector.run: interrupted; rerun with --resume to continue {log}", file=sys.stderr)
        return 130
    summary = write_outputs(cfg, args, names, indices, records, log)
    summary["this_run"] = run_stats(len(todo), time.perf_counter() - started, loop_seconds)
    atomic_write_text(log.parent / "summary.json", json.dumps(summary, indent=2) + "\n")
    print_summary(summary, log.parent / "summary.json")
    return 1 if summary["failed"] else 0


# ---- setup ----------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> Config:
    """The config file and ``KEY=VALUE`` overrides, then the explicit flags on top, resolved."""
    overrides = list(args.overrides)
    checkpoints = list(args.checkpoints or [])
    # `--checkpoints a b KEY=VALUE` would swallow the override: give it back.
    overrides += [c for c in checkpoints if "=" in c and not Path(c).exists()]
    checkpoints = [c for c in checkpoints if c not in overrides]
    cfg = load_config(args.config, overrides)
    if checkpoints:
        cfg.model.checkpoints, cfg.model.checkpoint_dir = checkpoints, ""
        cfg.model.members = len(checkpoints)
    if args.multibox:
        cfg.proposals.multibox.enabled, cfg.proposals.multibox.checkpoint = True, args.multibox
    inf = cfg.inference
    for key in ("score_threshold", "max_detections", "chunk_size"):
        if getattr(args, key) is not None:
            setattr(inf, key, getattr(args, key))
    if args.workers is not None:
        cfg.proposals.selective_search.workers = args.workers
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    return resolve_config(cfg, device=args.device, needs=Needs(data=False))


def image_indices(names: list[str], image_set: str | None) -> list[int]:
    """The devkit's image_index of each image: from the ImageSets file (matched by the
    relative path without extension), else the 1-based position in the sorted list."""
    if not image_set:
        return list(range(1, len(names) + 1))
    table: dict[str, int] = {}
    path = Path(image_set)
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise UsageError(f"{path}:{lineno}: expected '<name> <index>', got {line!r}")
        table[parts[0]] = int(parts[1])
    keys = [os.path.splitext(n)[0] for n in names]
    missing = [n for n, k in zip(names, keys, strict=True) if k not in table]
    if missing:
        raise UsageError(
            f"{path}: {len(missing)} image(s) not listed, e.g. {', '.join(missing[:3])}"
        )
    return [table[k] for k in keys]


def check_log(log: Path, *, resume: bool, overwrite: bool) -> dict[str, dict[str, Any]] | None:
    """The ok records already in the log (resume), or None for a new log.

    Nothing is created or truncated here: that waits until the detector is built, so a
    setup error leaves an existing log as it was.
    """
    if log.exists() and resume:
        return {r["image"]: r for r in repair_jsonl(log)}
    if log.exists() and not overwrite:
        raise UsageError(f"{log} exists: pass --resume to continue it or --overwrite")
    return None


def start_log(log: Path, fresh: bool) -> int:
    """An append-only descriptor on the log; a fresh log starts empty."""
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if fresh else 0)
    return os.open(log, flags, 0o644)


# ---- the run --------------------------------------------------------------------------------


def detect_all(
    cfg: Config,
    args: RunOptions,
    todo: list[tuple[Path, str]],
    log: Path,
    records: dict[str, dict[str, Any]],
    *,
    fresh: bool,
) -> tuple[int, float]:
    """Detect on ``todo``, appending one record per image (``fresh``: to an emptied log);
    fills ``records``.

    Returns:
        status: 0, 2 (the detector could not be built) or 130 (interrupted), and the
        seconds spent detecting (model loading excluded).
    """
    from detector.build import ModelSetupError
    from detector.detector import Detector

    try:
        detector = Detector.from_config(cfg)
    except (ConfigError, ModelSetupError, OSError, ValueError) as e:
        print(f"detector.run: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2, 0.0
    from tqdm import tqdm

    started = time.perf_counter()
    by_path = {str(p): n for p, n in todo}
    fd = start_log(log, fresh)
    bar = tqdm(total=len(todo), unit="img", disable=args.no_progress, dynamic_ncols=True)
    try:
        paths = [str(p) for p, _ in todo]
        workers = cfg.proposals.selective_search.workers
        for path, result in detector.detect_many(paths, workers=workers):
            record = make_record(by_path[path], result)
            append_record(fd, record)
            records[record["image"]] = record
            if not record["ok"]:
                bar.write(f"detector.run: failed: {record['error']}", file=sys.stderr)
            elif args.save_vis:
                save_vis(Path(args.save_vis), path, by_path[path], result, args.vis_top, bar)
            bar.update(1)
    except KeyboardInterrupt:
        return 130, time.perf_counter() - started
    finally:
        bar.close()
        os.close(fd)
    return 0, time.perf_counter() - started


def make_record(name: str, result: Any) -> dict[str, Any]:
    """The log record of one image: its detections, or a one-line error."""
    if isinstance(result, Exception):
        message = str(result) if isinstance(result, ImageLoadError) else _describe(name, result)
        return {"image": name, "ok": False, "error": " ".join(message.split())}
    return {"image": name, "ok": True, "detections": result.to_dict()}


def _describe(name: str, e: Exception) -> str:
    text = str(e)
    # Stages name the file themselves (mostly by its full path); otherwise prefix its name.
    return text if name in text else f"{name}: {type(e).__name__}: {text}"


def save_vis(folder: Path, path: str, name: str, detections: Any, top: int, bar: Any) -> None:
    """``<folder>/<relative path>.jpg`` with the boxes drawn (a failure only warns)."""
    from detector.visualize import save_visualization

    target = folder / Path(name).with_suffix(".jpg")
    try:
        save_visualization(target, load_image(path), detections, top=top)
    except (OSError, ImageLoadError) as e:
        bar.write(f"detector.run: warning: no visualisation for {name}: {e}", file=sys.stderr)


# ---- results --------------------------------------------------------------------------------


def write_outputs(
    cfg: Config,
    args: RunOptions,
    names: list[str],
    indices: list[int],
    records: dict[str, dict[str, Any]],
    log: Path,
) -> dict[str, Any]:
    """COCO results and submission (atomically) from the images of this list; the summary."""
    ok = [(i, records[n]) for n, i in zip(names, indices, strict=True) if _ok(records.get(n))]
    written = {"log": str(log)}
    if args.coco_results:
        ids = indices if args.image_set else coco_image_ids(names)
        by_name = dict(zip(names, ids, strict=True))
        pairs = [(by_name[r["image"]], r) for _, r in ok]
        atomic_write_text(args.coco_results, json.dumps(coco_results(pairs)) + "\n")
        written["coco_results"] = args.coco_results
    if args.submission:
        arrays = cap_per_class(from_records(ok), cfg.eval.max_per_class_total)
        write_submission(args.submission, arrays)
        written["submission"] = args.submission
    return summarize(names, records, written)


def summarize(
    names: list[str], records: dict[str, dict[str, Any]], written: dict[str, str]
) -> dict[str, Any]:
    failed = []
    for n in names:
        r = records.get(n)
        if not _ok(r):
            failed.append({"image": n, "error": r["error"] if r else "not processed"})
    ok = [records[n] for n in names if _ok(records.get(n))]
    return {
        "images": len(names),
        "ok": len(ok),
        "failed": failed,
        "detections": sum(len(r["detections"]["scores"]) for r in ok),
        "mean_seconds": mean_timings([r["detections"].get("timings", {}) for r in ok]),
        "written": written,
    }


def mean_timings(timings: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per image of each stage present."""
    out = {}
    for stage in STAGES:
        values = [t[stage] for t in timings if stage in t]
        if values:
            out[stage] = round(sum(values) / len(values), 4)
    return out


def run_stats(processed: int, seconds: float, detecting: float) -> dict[str, float]:
    """``seconds``: the whole run; ``images_per_second``: while detecting (no model loading)."""
    return {
        "processed": processed,
        "seconds": round(seconds, 2),
        "detect_seconds": round(detecting, 2),
        "images_per_second": round(processed / detecting, 3) if processed and detecting else 0.0,
    }


def print_summary(summary: dict[str, Any], path: Path) -> None:
    s = summary
    print(
        f"detector.run: {s['images']} images, {s['ok']} ok, {len(s['failed'])} failed, "
        f"{s['detections']} detections; this run {s['this_run']['processed']} images "
        f"in {s['this_run']['seconds']} s ({s['this_run']['images_per_second']} images/s)"
    )
    if s["mean_seconds"]:
        stages = ", ".join(f"{k} {v:.3f}" for k, v in s["mean_seconds"].items())
        print(f"  mean seconds per image: {stages}  (score = the CNNs)")
    for f in s["failed"]:
        print(f"  failed: {f['error']}")
    print(f"  wrote {', '.join(s['written'].values())}, {path}")


def _ok(record: dict[str, Any] | None) -> bool:
    return bool(record and record.get("ok"))


if __name__ == "__main__":
    sys.exit(main())
