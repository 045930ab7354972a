"""Detect objects in images: ``python -m detector.run --images PATH``.

Examples::

    python -m detector.run --images photos/                      # the demo models, demo config
    python -m detector.run --images photo.jpg                    # one image
    python -m detector.run --images list.txt                     # the images a text file lists
    python -m detector.run --images photos/ --recursive --save-vis runs/detect/vis
    python -m detector.run --config ilsvrc2014 --images ILSVRC2013_DET/Data/DET/val \\
        --image-set ILSVRC2013_DET/ImageSets/DET/val.txt --submission runs/val/sub.txt \\
        --output-dir runs/val --workers 2 inference.precision=bf16
    python -m detector.run --images photos/ --output-dir runs/detect/predict --resume
    python -m detector.run --images photos/ --checkpoints m0.safetensors m1.safetensors inference.nms_iou=0.4

``--images`` is a folder (its image files; subfolders too with ``--recursive``), a single
image file, or a text file listing images (one path per line, relative to the list's
folder; blank lines and "#" comments skipped). Without ``--output-dir`` every run writes to
a new folder: ``runs/detect/predict``, then ``predict2``, ``predict3``, ...

One JSON record per image is appended to ``<output-dir>/detections.jsonl`` as soon as the
image is done (format: ``detector.outputs``), so an interrupted run loses at most the image
in flight; the interrupt message prints the command that continues it. ``--resume`` keeps
the images already recorded ok, **retries the ones that failed** (their old records are
dropped, so every image has exactly one record), and drops a half-written last line. It
refuses a log written for other images (another folder, or an image whose content changed
since it was recorded), other settings or other models, saying which: ``--overwrite``
starts over. Without ``--resume`` or ``--overwrite`` an existing log is an error. COCO
results and the ILSVRC submission are written at the end, atomically, from the whole log. A
bad image (corrupt, truncated, empty, not an image, too many pixels) is reported on one line
and never stops the run. Outputs never overwrite an input or each other: ``--save-vis``
inside the images' folder, or two outputs naming the same file, are refused. Drawings
(``--save-vis DIR``) are named after the whole image file name (``a.png`` ->
``DIR/a.png.jpg``) and show the boxes scoring at least ``--vis-threshold``
(``inference.vis_threshold``, 0.5), at most ``--vis-top`` of them.

Exit status: 0 every image succeeded, 1 some images failed or a subfolder could not be
listed (both listed in the summary), 2 usage, input, config or model errors, 3 an output
could not be written (read-only folder, disk full; the log stays valid for --resume),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from detector.core.config import (
    Config,
    ConfigError,
    InferenceConfig,
    add_config_args,
    load_config,
    parse_args,
)
from detector.core.messages import one_line

STAGES = ("load", "propose", "warp", "score", "heads", "nms", "wait")

OK, FAILED, USAGE, OUTPUT, INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(ValueError):
    """A bad flag combination or input file (exit status 2)."""


class OutputFailure(OSError):
    """An output that cannot be written (exit status 3); the message names the path."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m detector.run",
        description="Detect objects in images (R-CNN with a GoogLeNet ensemble).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:"
        + __doc__.split("Examples::", 1)[1].split("``--images``", 1)[0]
        + "exit status: "
        + __doc__.split("Exit status: ", 1)[1],
    )
    p.add_argument(
        "--images",
        required=True,
        metavar="PATH",
        help="a folder of images, one image file, or a text file listing images "
        "(one path per line, relative to the list's folder)",
    )
    p.add_argument("--recursive", action="store_true", help="also images in subfolders")
    p.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="where detections.jsonl and summary.json go (default: a new folder per run, "
        f"{RunOptions.NEW_RUN_DIR}, {RunOptions.NEW_RUN_DIR}2, ...)",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="the JSON-lines log (default: <output-dir>/detections.jsonl)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the log in --output-dir: skip images recorded ok, retry failed ones "
        "(refused when the images, settings or models differ)",
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
        "--coco-results (default: 1-based position in the image list)",
    )
    p.add_argument(
        "--save-vis",
        metavar="DIR",
        help="write a JPEG with drawn boxes per image (<DIR>/<image file name>.jpg)",
    )
    p.add_argument(
        "--vis-threshold",
        type=float,
        metavar="P",
        help="inference.vis_threshold: draw the boxes scoring at least P "
        f"(default {InferenceConfig.vis_threshold})",
    )
    p.add_argument(
        "--vis-top",
        type=int,
        default=RunOptions.vis_top,
        metavar="N",
        help=f"at most N boxes drawn per image (default {RunOptions.vis_top}; 0 = no limit)",
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
        help="processes computing proposals ahead of scoring "
        "(default: proposals.selective_search.workers; 0 = all cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    return p


@dataclass
class RunOptions:
    """What to detect on and where the results go (the flags of ``python -m detector.run``)."""

    NEW_RUN_DIR: ClassVar[str] = "runs/detect/predict"  # then predict2, predict3, ...

    images: str
    recursive: bool = False
    output_dir: str | None = None  # None = a new folder: NEW_RUN_DIR, NEW_RUN_DIR2, ...
    output: str | None = None  # the log; None = <output_dir>/detections.jsonl
    resume: bool = False
    overwrite: bool = False
    coco_results: str | None = None
    submission: str | None = None
    image_set: str | None = None
    save_vis: str | None = None
    vis_top: int = 20
    no_progress: bool = False
    argv: list[str] | None = None  # the command line as typed, for the resume hint

    @classmethod
    def from_args(cls, args: argparse.Namespace, argv: list[str] | None = None) -> RunOptions:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "argv"}
        return cls(**values, argv=argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(get_args_parser(), argv)
    # Everything heavy (torch, OpenCV, the detector) is imported after parsing: --help is fast.
    from detector.core.runtime import tolerant_console, tune_allocator

    tolerant_console()
    from detector.resolve import ResolveError

    tune_allocator()
    try:
        cfg = build_config(args)
    except (ConfigError, ResolveError, UsageError) as e:
        return _error(e, USAGE)
    return detect_folder(cfg, RunOptions.from_args(args, argv))


def _error(e: BaseException | str, status: int) -> int:
    print(f"detector.run: error: {one_line(e)}", file=sys.stderr)
    return status


@dataclass
class Plan:
    """A checked run: the images, where everything goes, what the log already holds."""

    listing: Any  # detector.core.io.ImageListing
    indices: list[int]
    out_dir: Path
    log: Path
    summary: Path
    header: dict[str, Any]
    existing: dict[str, dict[str, Any]] | None  # None = a new log
    created: bool  # out_dir was made by this run (removed again if the run stops at setup)


def detect_folder(cfg: Config, args: RunOptions) -> int:
    """Detect on every image of ``args.images`` with a resolved config; returns the exit status."""
    try:
        plan = plan_run(cfg, args)
    except OutputFailure as e:
        return _error(e, OUTPUT)
    except (UsageError, ValueError, OSError) as e:  # ImageListError, OutputError, ...
        return _error(e, USAGE)
    status = run_plan(cfg, args, plan)
    if status in (USAGE, OUTPUT) and plan.created:
        with contextlib.suppress(OSError):
            plan.out_dir.rmdir()  # only when still empty
    return status


def plan_run(cfg: Config, args: RunOptions) -> Plan:
    """Everything checked before a model is loaded: the images, the output paths (no
    overlap with the inputs or each other, writable), the log to resume.

    Raises:
        UsageError, ImageListError, OutputError, OSError: exit status 2.
        OutputFailure: an output folder that cannot be written (exit status 3).
    """
    from detector.core.io import find_images
    from detector.outputs import detection_settings, log_header, model_digests

    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if args.resume and not args.output_dir and not args.output:
        latest = latest_run_dir(Path(RunOptions.NEW_RUN_DIR))
        hint = f" (the latest is {latest})" if latest else ""
        raise UsageError(f"--resume continues a run: name its folder with --output-dir{hint}")
    listing = find_images(args.images, recursive=args.recursive)
    indices = image_indices(listing.names, args.image_set)
    try:
        models = model_digests(cfg)
    except OSError as e:
        raise UsageError(f"cannot read a checkpoint: {_os_message(e)}") from None
    source = os.path.realpath(args.images)
    root = os.path.realpath(listing.root)
    header = log_header(source, root, detection_settings(cfg), models)
    auto = not args.output_dir and not args.output
    out_dir = (
        first_free_run_dir(Path(RunOptions.NEW_RUN_DIR))
        if auto
        else Path(args.output).parent
        if args.output
        else Path(args.output_dir)
    )
    log = Path(args.output) if args.output else out_dir / "detections.jsonl"
    summary = log.parent / "summary.json"
    check_paths(cfg, args, listing, log, summary)
    existing = check_log(log, header, listing, resume=args.resume, overwrite=args.overwrite)
    created = False
    if auto:
        out_dir = claim_run_dir(out_dir)
        log, summary, created = out_dir / "detections.jsonl", out_dir / "summary.json", True
    else:
        created = not log.parent.exists()
    folders = [log.parent]
    folders += [Path(p).parent for p in (args.coco_results, args.submission) if p]
    folders += [Path(args.save_vis)] if args.save_vis else []
    for folder in folders:
        check_writable(folder)
    return Plan(listing, indices, log.parent, log, summary, header, existing, created)


def run_plan(cfg: Config, args: RunOptions, plan: Plan) -> int:
    listing = plan.listing
    names, images = listing.names, listing.images
    print(
        f"detector.run: {len(names)} images from the {listing.kind} {args.images} -> {plan.out_dir}"
    )
    if listing.skipped:
        print(
            f"detector.run: note: {listing.skipped} images in subfolders of {args.images} "
            "skipped; pass --recursive to include them",
            file=sys.stderr,
        )
    for folder in listing.unlistable:
        print(
            f"detector.run: warning: cannot list {folder}; its images are left out", file=sys.stderr
        )
    if not images:
        print(f"detector.run: warning: no images found in {args.images}", file=sys.stderr)
    records = plan.existing or {}
    todo = [(p, n) for p, n in zip(images, names, strict=True) if n not in records]
    started = time.perf_counter()
    status, loop_seconds = OK, 0.0
    if todo or plan.existing is None:
        status, loop_seconds = detect_all(cfg, args, plan, todo, records)
        if status in (USAGE, OUTPUT):
            return status
    if status == INTERRUPTED:
        print(
            f"detector.run: interrupted; to continue: {resume_command(args, plan)}",
            file=sys.stderr,
        )
        return INTERRUPTED
    try:
        summary = write_outputs(cfg, args, names, plan.indices, records, plan.log)
        summary["unlistable"] = listing.unlistable
        summary["skipped_in_subfolders"] = listing.skipped
        summary["this_run"] = run_stats(len(todo), time.perf_counter() - started, loop_seconds)
        _write(plan.summary, json.dumps(summary, indent=2) + "\n")
    except OutputFailure as e:
        return _error(e, OUTPUT)
    print_summary(summary, plan.summary)
    return FAILED if summary["failed"] or listing.unlistable else OK


# ---- setup ----------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> Config:
    """The config file and ``KEY=VALUE`` overrides, then the explicit flags on top, resolved."""
    from detector.resolve import Needs, resolve_config

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
    for key in ("score_threshold", "max_detections", "chunk_size", "vis_threshold"):
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
    relative path without extension), else the 1-based position in the image list."""
    if not image_set:
        return list(range(1, len(names) + 1))
    table: dict[str, int] = {}
    path = Path(image_set)
    try:
        text = path.read_text()
    except (OSError, UnicodeError) as e:
        raise UsageError(f"{path}: cannot read the image set ({_os_message(e)})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
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


def run_dir_candidates(base: Path):
    """``base``, ``base2``, ``base3``, ... (ultralytics' ``runs/detect/predict`` numbering)."""
    yield base
    n = 2
    while True:
        yield base.with_name(f"{base.name}{n}")
        n += 1


def first_free_run_dir(base: Path) -> Path:
    return next(p for p in run_dir_candidates(base) if not p.exists())


def claim_run_dir(start: Path) -> Path:
    """Create the first free run folder from ``start`` on (a concurrent run takes the next)."""
    candidates = run_dir_candidates(Path(RunOptions.NEW_RUN_DIR))
    for p in candidates:
        if p == start:
            break
    for p in itertools.chain([start], candidates):
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.mkdir()
            return p
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputFailure(
                f"{p}: cannot create the output folder ({_os_message(e)})"
            ) from None
    raise AssertionError("unreachable")


def latest_run_dir(base: Path) -> Path | None:
    """The highest-numbered existing run folder of ``base`` (None when there is none)."""
    if not base.parent.is_dir():
        return None
    best, best_n = None, 0
    for p in base.parent.iterdir():
        suffix = p.name[len(base.name) :]
        if p.name.startswith(base.name) and p.is_dir() and (suffix == "" or suffix.isdigit()):
            n = int(suffix) if suffix else 1
            if n > best_n:
                best, best_n = p, n
    return best


def check_paths(cfg: Config, args: RunOptions, listing: Any, log: Path, summary: Path) -> None:
    """Refuse outputs that would overwrite an input or each other.

    The log, the summary, ``--coco-results`` and ``--submission`` must be four different
    files, none of them a folder or an input (an image, the list, the image set, the config,
    a checkpoint); ``--save-vis`` must not be inside (or be) a folder holding the images.
    """
    outputs = {"the log": log, "summary.json": summary}
    if args.coco_results:
        outputs["--coco-results"] = Path(args.coco_results)
    if args.submission:
        outputs["--submission"] = Path(args.submission)
    seen: dict[str, str] = {}
    for what, path in outputs.items():
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{path}: {what} and {seen[real]} would be the same file")
        seen[real] = what
        if os.path.isdir(real):
            raise UsageError(f"{path}: {what} is a folder, not a file")
    inputs = {os.path.realpath(p): "one of the images" for p in listing.images}
    if listing.kind == "list":
        inputs[os.path.realpath(args.images)] = "the image list (--images)"
    named = {
        "the image set (--image-set)": args.image_set,
        "the config file": cfg.source,
        "the MultiBox checkpoint": cfg.proposals.multibox.checkpoint,
    }
    named.update({f"checkpoint {p}": p for p in cfg.model.checkpoints})
    inputs.update({os.path.realpath(p): what for what, p in named.items() if p})
    for real, what in seen.items():
        if real in inputs:
            raise UsageError(f"{real}: {what} would overwrite {inputs[real]}")
    if args.save_vis:
        vis = Path(os.path.realpath(args.save_vis))
        folders = {os.path.realpath(listing.root)}
        folders |= {os.path.dirname(real) for real in inputs if inputs[real] == "one of the images"}
        for folder in (vis, *vis.parents):
            if str(folder) in folders:
                raise UsageError(
                    f"--save-vis {args.save_vis} is inside the folder of the images "
                    f"({folder}): drawings would mix with or overwrite them; choose another folder"
                )


def check_log(
    log: Path, header: dict[str, Any], listing: Any, *, resume: bool, overwrite: bool
) -> dict[str, dict[str, Any]] | None:
    """The ok records already in the log (resume), or None for a new log.

    A resumed log must have been written for the same images source, settings and models
    (its header), and every recorded image must still hold the bytes it had. Nothing is
    created or truncated here: that waits until the detector is built, so a setup error
    leaves an existing log as it was (a resumed log only loses its failed records and a
    partial last line).
    """
    from detector.core.digests import same_file
    from detector.outputs import header_mismatch, read_log, repair_jsonl

    if not log.exists():
        return None
    if not resume:
        if overwrite:
            return None
        raise UsageError(f"{log} exists: pass --resume to continue it or --overwrite to replace it")
    old, records, _ = read_log(log)
    if old is None and not records:
        return None  # an empty log: nothing to continue
    why = header_mismatch(old, header)
    if why:
        raise UsageError(f"{log}: cannot resume: {why}; pass --overwrite to start over")
    recorded = {}
    for r in records:
        if r.get("ok"):
            recorded.setdefault(r["image"], r)
    changed = [
        n
        for n, p in zip(listing.names, listing.images, strict=True)
        if n in recorded and not same_file(p, recorded[n].get("file") or {})
    ]
    if changed:
        shown = ", ".join(changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UsageError(
            f"{log}: cannot resume: {len(changed)} image(s) changed since they were recorded "
            f"({shown}); pass --overwrite to start over"
        )
    try:
        return {r["image"]: r for r in repair_jsonl(log)}
    except OSError as e:
        raise OutputFailure(f"{log}: cannot rewrite the log ({_os_message(e)})") from None


def check_writable(folder: Path) -> None:
    """Create ``folder`` and a file in it, before any model is loaded (exit 3 if it fails)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputFailure(f"{folder}: cannot write here ({_os_message(e)})") from None


def start_log(log: Path, fresh: bool, header: dict[str, Any]) -> int:
    """An append-only descriptor on the log; a fresh log starts with its header only."""
    from detector.outputs import append_record

    log.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if fresh else 0)
    fd = os.open(log, flags, 0o666)  # the umask decides, as for every other output
    if fresh:
        try:
            append_record(fd, header)
        except OSError:
            os.close(fd)
            raise
    return fd


def resume_command(args: RunOptions, plan: Plan) -> str:
    """The command that continues this run: the one typed, with ``--resume`` and the run's
    ``--output-dir`` (first, so that trailing KEY=VALUE overrides stay last)."""
    if args.argv is None:
        tokens = ["--images", args.images] + (["--recursive"] if args.recursive else [])
        for flag in ("output", "coco_results", "submission", "image_set", "save_vis"):
            if getattr(args, flag):
                tokens += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    else:
        tokens, skip = [], False
        for t in args.argv:
            if skip:
                skip = False
            elif t == "--output-dir":
                skip = True
            elif t not in ("--resume", "--overwrite") and not t.startswith("--output-dir="):
                tokens.append(t)
    where = [] if args.output else ["--output-dir", str(plan.out_dir)]
    return shlex.join(["python", "-m", "detector.run", *where, "--resume", *tokens])


# ---- the run --------------------------------------------------------------------------------


def detect_all(
    cfg: Config,
    args: RunOptions,
    plan: Plan,
    todo: list[tuple[Path, str]],
    records: dict[str, dict[str, Any]],
) -> tuple[int, float]:
    """Detect on ``todo``, appending one record per image (to a new log when
    ``plan.existing`` is None); fills ``records``.

    Returns:
        status: 0, 2 (the detector could not be built), 3 (the log could not be written)
        or 130 (interrupted), and the seconds spent detecting (model loading excluded).
    """
    from detector.build import ModelSetupError
    from detector.detector import Detector
    from detector.outputs import append_record

    try:
        detector = Detector.from_config(cfg) if todo else None
    except (ConfigError, ModelSetupError, OSError, ValueError) as e:
        return _error(e, USAGE), 0.0
    try:
        fd = start_log(plan.log, plan.existing is None, plan.header)
    except OSError as e:
        return _error(f"{plan.log}: cannot write the log ({_os_message(e)})", OUTPUT), 0.0
    if detector is None:
        os.close(fd)
        return OK, 0.0
    from tqdm import tqdm

    started = time.perf_counter()
    by_path = {str(p): n for p, n in todo}
    bar = tqdm(total=len(todo), unit="img", disable=args.no_progress, dynamic_ncols=True)
    threshold = cfg.inference.vis_threshold
    try:
        paths = [str(p) for p, _ in todo]
        workers = cfg.proposals.selective_search.workers
        for path, result in detector.detect_many(paths, workers=workers):
            record = make_record(by_path[path], path, result)
            try:
                append_record(fd, record)
            except OSError as e:
                bar.close()
                message = f"{plan.log}: cannot write the log ({_os_message(e)})"
                print(f"detector.run: error: {message}; --resume continues it", file=sys.stderr)
                return OUTPUT, time.perf_counter() - started
            records[record["image"]] = record
            if not record["ok"]:
                bar.write(f"detector.run: failed: {record['error']}", file=sys.stderr)
            elif args.save_vis:
                target = vis_path(Path(args.save_vis), by_path[path])
                save_vis(target, path, result, args.vis_top, threshold, bar)
            bar.update(1)
    except KeyboardInterrupt:
        return INTERRUPTED, time.perf_counter() - started
    finally:
        bar.close()
        os.close(fd)
    return OK, time.perf_counter() - started


def make_record(name: str, path: str, result: Any) -> dict[str, Any]:
    """The log record of one image: its file's identity and detections, or a one-line error."""
    from detector.core.digests import file_identity
    from detector.core.io import ImageLoadError

    if isinstance(result, Exception):
        message = str(result) if isinstance(result, ImageLoadError) else _describe(name, result)
        return {"image": name, "ok": False, "error": " ".join(message.split())}
    record: dict[str, Any] = {"image": name, "ok": True}
    with contextlib.suppress(OSError):  # gone since it was read: a resume sees it as changed
        record["file"] = file_identity(path)
    record["detections"] = result.to_dict()
    return record


def _describe(name: str, e: Exception) -> str:
    text = str(e)
    # Stages name the file themselves (mostly by its full path); otherwise prefix its name.
    return text if name in text else f"{name}: {type(e).__name__}: {text}"


def vis_path(folder: Path, name: str) -> Path:
    """``<folder>/<name>.jpg``: the whole file name is kept, so ``a.jpg`` and ``a.png`` get
    two drawings; a listed image outside the list's folder (absolute, or ``..``) is drawn
    below ``folder`` all the same."""
    parts = [p if p != ".." else "__" for p in PurePosixPath(name).parts if p != "/"]
    parts[-1] += ".jpg"
    return folder.joinpath(*parts)


def save_vis(
    target: Path, path: str, detections: Any, top: int, threshold: float, bar: Any
) -> None:
    """Draw the boxes scoring at least ``threshold`` (a failure only warns)."""
    from detector.core.io import ImageLoadError, load_image
    from detector.visualize import save_visualization

    try:
        save_visualization(target, load_image(path), detections, top=top, min_score=threshold)
    except (OSError, ImageLoadError) as e:
        bar.write(f"detector.run: warning: no drawing {target}: {_os_message(e)}", file=sys.stderr)


# ---- results --------------------------------------------------------------------------------


def write_outputs(
    cfg: Config,
    args: RunOptions,
    names: list[str],
    indices: list[int],
    records: dict[str, dict[str, Any]],
    log: Path,
) -> dict[str, Any]:
    """COCO results and submission (atomically) from the images of this list; the summary.

    Raises:
        OutputFailure: a file could not be written.
    """
    from detector.outputs import coco_image_ids, coco_results
    from eval.submission import cap_per_class, from_records, write_submission

    ok = [(i, records[n]) for n, i in zip(names, indices, strict=True) if _ok(records.get(n))]
    written = {"log": str(log)}
    if args.coco_results:
        ids = indices if args.image_set else coco_image_ids(names)
        by_name = dict(zip(names, ids, strict=True))
        pairs = [(by_name[r["image"]], r) for _, r in ok]
        _write(Path(args.coco_results), json.dumps(coco_results(pairs)) + "\n")
        written["coco_results"] = args.coco_results
    if args.submission:
        arrays = cap_per_class(from_records(ok), cfg.eval.max_per_class_total)
        try:
            write_submission(args.submission, arrays)
        except OSError as e:
            raise OutputFailure(f"{args.submission}: cannot write ({_os_message(e)})") from None
        written["submission"] = args.submission
    return summarize(names, records, written)


def _write(path: Path, text: str) -> None:
    from detector.core.atomic import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise OutputFailure(f"{path}: cannot write ({_os_message(e)})") from None


def _os_message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return one_line(e)


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
    for folder in s.get("unlistable", []):
        print(f"  cannot list {folder}")
    print(f"  wrote {', '.join(s['written'].values())}, {path}")
    print(f"  results in {path.parent}/")


def _ok(record: dict[str, Any] | None) -> bool:
    return bool(record and record.get("ok"))


if __name__ == "__main__":
    sys.exit(main())
