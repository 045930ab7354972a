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
import copy
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, fields, replace
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
from detector.core.distributed import Group, Shard, World
from detector.core.messages import one_line
from detector.log_parts import merge_parts, part_path
from detector.run_checks import (
    NEW_RUN_DIR,
    OutputFailure,
    UsageError,
    _os_message,
    check_log,
    check_paths,
    check_share,
    check_writable,
    claim_run_dir,
    first_free_run_dir,
    image_indices,
    latest_run_dir,
)

STAGES = ("load", "propose", "warp", "score", "heads", "nms", "wait")

OK, FAILED, USAGE, OUTPUT, INTERRUPTED = 0, 1, 2, 3, 130


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
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="detect only share I of N (0-based; every N-th image from the I-th) into a part of "
        "the log, e.g. for a job array; a later --resume without --shard merges the parts "
        "(under torchrun each rank takes its share by itself)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    return p


@dataclass
class RunOptions:
    """What to detect on and where the results go (the flags of ``python -m detector.run``)."""

    NEW_RUN_DIR: ClassVar[str] = NEW_RUN_DIR

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
    shard: str | None = None  # "I/N": this share of the images only (a job-array task)
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
    existing: dict[str, dict[str, Any]] | None  # the ok records done; None = a new log
    created: bool  # out_dir was made by this run (removed again if the run stops at setup)
    shard: Shard = field(default_factory=Shard)  # the share of the images this process takes
    writes: Path | None = None  # the file records are appended to: the log, or this share's part
    fresh: bool = True  # ``writes`` starts over (a header only) when the detector is built
    lock: Any = None  # detector.core.locks.OutputLock held while the run writes

    def todo(self) -> list[tuple[Path, str]]:
        """(path, name) of the images of this share not yet recorded ok."""
        done = self.existing or {}
        pairs = list(zip(self.listing.images, self.listing.names, strict=True))
        return [(p, n) for p, n in self.shard.take(pairs) if n not in done]


def detect_folder(cfg: Config, args: RunOptions) -> int:
    """Detect on every image of ``args.images`` with a resolved config; returns the exit status.

    Under torchrun every rank takes its share and rank 0 merges (:func:`detect_ranks`);
    with ``args.shard`` this process detects its share into a part of the log.
    """
    world = World.from_env()
    if world.distributed:
        if args.shard:
            return _error("--shard is for runs without torchrun (each rank takes its share)", USAGE)
        with Group.join(world) as group:
            return detect_ranks(cfg, args, world, group)
    try:
        shard = Shard.parse(args.shard) if args.shard else Shard()
        plan = plan_run(cfg, args, shard)
    except OutputFailure as e:
        return _error(e, OUTPUT)
    except (UsageError, ValueError, OSError) as e:  # ImageListError, OutputError, ...
        return _error(e, USAGE)
    status = OK
    try:
        status = run_plan(cfg, args, plan)
    finally:
        release(plan, status)
    return status


def plan_run(cfg: Config, args: RunOptions, shard: Shard) -> Plan:
    """Everything checked before a model is loaded: the images, the output paths (no
    overlap with the inputs or each other, writable), the lock on the output folder, the
    log to resume (with its parts merged, for a whole run).

    Raises:
        UsageError, ImageListError, OutputError, OSError: exit status 2.
        OutputFailure: an output folder that cannot be written (exit status 3).
    """
    from detector.core.io import find_images
    from detector.outputs import detection_settings, log_header, model_digests

    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    auto = not args.output_dir and not args.output
    if args.resume and auto:
        latest = latest_run_dir(Path(RunOptions.NEW_RUN_DIR))
        hint = f" (the latest is {latest})" if latest else ""
        raise UsageError(f"--resume continues a run: name its folder with --output-dir{hint}")
    if auto and not shard.whole:
        raise UsageError("--shard needs --output-dir: every share writes into the same folder")
    listing = find_images(args.images, recursive=args.recursive)
    indices = image_indices(listing.names, args.image_set)
    try:
        models = model_digests(cfg)
    except OSError as e:
        raise UsageError(f"cannot read a checkpoint: {_os_message(e)}") from None
    source = os.path.realpath(args.images)
    root = os.path.realpath(listing.root)
    header = log_header(source, root, detection_settings(cfg), models)
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
    if auto:
        out_dir = claim_run_dir(out_dir)
        log, summary, created = out_dir / "detections.jsonl", out_dir / "summary.json", True
    else:
        created = not log.parent.exists()
    plan = Plan(listing, indices, log.parent, log, summary, header, None, created, shard, log)
    plan.lock = take_lock(log.parent, shard)
    try:
        if shard.whole:
            plan.existing = check_log(
                log, header, listing, resume=args.resume, overwrite=args.overwrite
            )
            plan.fresh = plan.existing is None
        else:
            plan.existing, plan.fresh = check_share(
                log, shard, header, listing, resume=args.resume, overwrite=args.overwrite
            )
            plan.writes = part_path(log, shard)
        folders = [log.parent]
        folders += [Path(p).parent for p in (args.coco_results, args.submission) if p]
        folders += [Path(args.save_vis)] if args.save_vis else []
        for folder in folders:
            check_writable(folder)
    except BaseException:
        release(plan, USAGE)
        raise
    return plan


def take_lock(folder: Path, shard: Shard) -> Any:
    """Own ``folder`` for this run (or share); say so when a stopped run's lock is taken over."""
    from detector.core.locks import LockedError, lock_output

    try:
        lock = lock_output(folder, shard)
    except LockedError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise OutputFailure(f"{folder}: cannot write here ({_os_message(e)})") from None
    if lock.previous:
        print(
            f"detector.run: note: {folder} was locked by a run that stopped without finishing "
            f"(pid {lock.previous.get('pid')} on {lock.previous.get('host')}); taking it over",
            file=sys.stderr,
        )
    return lock


def release(plan: Plan, status: int) -> None:
    """Drop the lock; a folder this run created is removed again if the run stopped at setup."""
    from detector.core.locks import LOCK_NAME

    if plan.lock is not None:
        plan.lock.release()
        plan.lock = None
    if status in (USAGE, OUTPUT) and plan.created:
        with contextlib.suppress(OSError):
            for lock_file in plan.out_dir.glob(f"{LOCK_NAME}*"):
                lock_file.unlink()
            plan.out_dir.rmdir()  # only when nothing else is in it


def run_plan(cfg: Config, args: RunOptions, plan: Plan) -> int:
    announce(args, plan)
    records = dict(plan.existing or {})
    todo = plan.todo()
    started = time.perf_counter()
    status, loop_seconds = OK, 0.0
    if todo or plan.fresh:
        status, loop_seconds = detect_all(cfg, args, plan, todo, records)
        if status in (USAGE, OUTPUT):
            return status
    if status == INTERRUPTED:
        print(
            f"detector.run: interrupted; to continue: {resume_command(args, plan)}",
            file=sys.stderr,
        )
        return INTERRUPTED
    if not plan.shard.whole:
        return share_done(args, plan, todo, records)
    stats = run_stats(len(todo), time.perf_counter() - started, loop_seconds)
    return finish_run(cfg, args, plan, stats)


def announce(args: RunOptions, plan: Plan, ranks: int = 1) -> None:
    """What the run is about to do, and what it leaves out of the source."""
    listing = plan.listing
    share = "" if plan.shard.whole else f" (share {plan.shard})"
    share += f" ({ranks} ranks)" if ranks > 1 else ""
    print(
        f"detector.run: {len(listing.names)} images{share} from the {listing.kind} "
        f"{args.images} -> {plan.out_dir}"
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
    if not listing.images:
        print(f"detector.run: warning: no images found in {args.images}", file=sys.stderr)


def finish_run(cfg: Config, args: RunOptions, plan: Plan, stats: dict[str, Any]) -> int:
    """The end of a whole run: the log with any parts merged, in image-list order
    (``detector.log_parts``), then the COCO results, submission and summary from it."""
    listing = plan.listing
    try:
        records = merge_parts(plan.log, plan.header, listing.names)
    except (OSError, ValueError) as e:
        return _error(f"{plan.log}: cannot merge the parts ({_os_message(e)})", OUTPUT)
    try:
        summary = write_outputs(cfg, args, listing.names, plan.indices, records, plan.log)
        summary["unlistable"] = listing.unlistable
        summary["skipped_in_subfolders"] = listing.skipped
        summary["this_run"] = stats
        _write(plan.summary, json.dumps(summary, indent=2) + "\n")
    except OutputFailure as e:
        return _error(e, OUTPUT)
    print_summary(summary, plan.summary)
    return FAILED if summary["failed"] or listing.unlistable else OK


def share_done(
    args: RunOptions, plan: Plan, todo: list[tuple[Path, str]], records: dict[str, Any]
) -> int:
    """A ``--shard`` task ends with its part written; the whole run's outputs wait for the
    merge, which the command printed here does once every share is done."""
    mine = plan.shard.take(plan.listing.names)
    failed = [n for n in mine if not _ok(records.get(n))]
    print(
        f"detector.run: share {plan.shard}: {len(mine)} images, {len(mine) - len(failed)} ok, "
        f"{len(failed)} failed ({len(todo)} detected now) -> {plan.writes}"
    )
    for n in failed:
        error = records[n]["error"] if n in records else "not processed"
        print(f"  failed: {error}")
    print(f"  when every share is done, merge them: {resume_command(args, plan, whole=True)}")
    return FAILED if failed else OK


# ---- torchrun -------------------------------------------------------------------------------


def detect_ranks(cfg: Config, args: RunOptions, world: World, group: Group) -> int:
    """One rank of ``torchrun -m detector.run``: rank 0 checks and locks the run as a whole
    run would (merging old parts when resuming); every rank detects its share
    (:meth:`Shard.take`) into its own part; when all are done, rank 0 merges the parts into
    the log, in image-list order, and writes the outputs of the whole run."""
    cfg = rank_config(cfg, world)
    plan, status = None, OK
    if world.is_main:
        try:
            plan = plan_run(cfg, args, Shard())
        except OutputFailure as e:
            status = _error(e, OUTPUT)
        except (UsageError, ValueError, OSError) as e:
            status = _error(e, USAGE)
    shared = group.broadcast(status if plan is None else _for_ranks(plan))
    if isinstance(shared, int):
        return shared
    plan = plan if world.is_main else shared
    if world.is_main:
        announce(args, plan, world.size)
    try:
        status = _detect_share(cfg, args, world, group, plan)
    finally:
        if world.is_main:
            release(plan, status)
    return status


def _detect_share(cfg: Config, args: RunOptions, world: World, group: Group, plan: Plan) -> int:
    started = time.perf_counter()
    share = replace(plan, shard=world.shard, writes=part_path(plan.log, world.shard), fresh=True)
    todo = share.todo()
    detector = build_detector(cfg) if todo else None
    built = group.gather(detector if isinstance(detector, int) else OK)
    if any(s != OK for s in built):
        return max(built)  # every rank stops before an old log is touched
    ready = group.gather(_start_fresh_log(plan) if world.is_main and plan.fresh else OK)
    if any(s != OK for s in ready):
        return max(ready)  # nobody writes a part before the log is ready
    status, seconds = detect_into(detector, cfg, args, share, todo, {}, progress=world.is_main)
    results = group.gather((status, len(todo), seconds))  # waits for the slowest rank
    if not world.is_main:
        return status
    worst = max(r[0] for r in results)
    if worst in (OUTPUT, INTERRUPTED):
        print(f"detector.run: stopped; to continue: {resume_command(args, plan)}", file=sys.stderr)
        return worst
    processed = sum(r[1] for r in results)
    stats = run_stats(processed, time.perf_counter() - started, max(r[2] for r in results))
    stats["ranks"] = world.size
    return finish_run(cfg, args, plan, stats)


def _start_fresh_log(plan: Plan) -> int:
    """Rank 0 of a fresh run: the log with its header only, and no old parts."""
    from detector.log_parts import remove_parts

    try:
        os.close(start_log(plan.log, True, plan.header))
        remove_parts(plan.log)
    except OSError as e:
        return _error(f"{plan.log}: cannot write the log ({_os_message(e)})", OUTPUT)
    return OK


def _for_ranks(plan: Plan) -> Plan:
    """Rank 0's plan as the other ranks need it: no lock, the names of the images done."""
    done = {n: {"ok": True} for n in plan.existing or {}}
    return replace(plan, lock=None, existing=done if plan.existing is not None else None)


def rank_config(cfg: Config, world: World) -> Config:
    """This rank's device (its local GPU) or share of the CPU cores: the ranks of a machine
    split its cores between their torch threads and selective-search processes."""
    from detector.core.runtime import available_cores

    cfg = copy.deepcopy(cfg)
    inf, ss = cfg.inference, cfg.proposals.selective_search
    inf.device = world.device(inf.device)
    cores = world.cores(available_cores())
    inf.threads = inf.threads or cores
    ss.workers = ss.workers or cores
    return cfg


# ---- setup ----------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> Config:
    """The config file and ``KEY=VALUE`` overrides, then the explicit flags on top, resolved."""
    from detector.resolve import RUN_LIST, resolve_config

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
    return resolve_config(cfg, device=args.device, needs=RUN_LIST)


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


def resume_command(args: RunOptions, plan: Plan, *, whole: bool = False) -> str:
    """The command that continues this run: the one typed, with ``--resume`` and the run's
    ``--output-dir`` (first, so that trailing KEY=VALUE overrides stay last). ``whole``:
    without ``--shard`` (the command that merges the shares). Under torchrun: the torchrun
    command, with the launcher's flags left to the user."""
    drop = {"--output-dir"} | ({"--shard"} if whole else set())
    if args.argv is None:
        tokens = ["--images", args.images] + (["--recursive"] if args.recursive else [])
        flags = ["output", "coco_results", "submission", "image_set", "save_vis"]
        for flag in flags + ([] if whole else ["shard"]):
            if getattr(args, flag):
                tokens += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    else:
        tokens, skip = [], False
        for t in args.argv:
            if skip:
                skip = False
            elif t in drop:
                skip = True
            elif t not in ("--resume", "--overwrite") and not any(
                t.startswith(f"{d}=") for d in drop
            ):
                tokens.append(t)
    where = [] if args.output else ["--output-dir", str(plan.out_dir)]
    launcher = ["python"]
    if World.from_env().distributed:
        launcher = ["torchrun", "<the same torchrun options>"]
    return shlex.join([*launcher, "-m", "detector.run", *where, "--resume", *tokens])


# ---- the run --------------------------------------------------------------------------------


def build_detector(cfg: Config) -> Any:
    """The detector of ``cfg``, or exit status 2 (the error printed)."""
    from detector.build import ModelSetupError
    from detector.detector import Detector

    try:
        return Detector.from_config(cfg)
    except (ConfigError, ModelSetupError, OSError, ValueError) as e:
        return _error(e, USAGE)


def detect_all(
    cfg: Config,
    args: RunOptions,
    plan: Plan,
    todo: list[tuple[Path, str]],
    records: dict[str, dict[str, Any]],
) -> tuple[int, float]:
    """Build the detector, then :func:`detect_into`; a fresh whole run drops old parts."""
    from detector.log_parts import remove_parts

    detector = build_detector(cfg) if todo else None
    if isinstance(detector, int):
        return detector, 0.0
    if plan.fresh and plan.shard.whole:
        remove_parts(plan.log)  # --overwrite: the old shares' records go with the old log
    return detect_into(detector, cfg, args, plan, todo, records)


def calibrate(detector: Any, cfg: Config, plan: Plan) -> None:
    """int8: calibrate on the first ``inference.calibration_images`` images of the whole list,
    not of this share or of what is left to do, so that shares, ranks and resumed runs
    quantize alike (and so detect alike)."""
    count = cfg.inference.calibration_images
    if detector.scorer.needs_calibration and count > 0:
        detector.calibrate([str(p) for p in plan.listing.images[:count]])


def detect_into(
    detector: Any,
    cfg: Config,
    args: RunOptions,
    plan: Plan,
    todo: list[tuple[Path, str]],
    records: dict[str, dict[str, Any]],
    *,
    progress: bool = True,
) -> tuple[int, float]:
    """Detect on ``todo``, appending one record per image to ``plan.writes`` (started
    afresh when ``plan.fresh``); fills ``records``.

    Returns:
        status: 0, 3 (the log could not be written) or 130 (interrupted), and the seconds
        spent detecting (model loading excluded).
    """
    from detector.outputs import append_record

    try:
        fd = start_log(plan.writes, plan.fresh, plan.header)
    except OSError as e:
        return _error(f"{plan.writes}: cannot write the log ({_os_message(e)})", OUTPUT), 0.0
    if detector is None:
        os.close(fd)
        return OK, 0.0
    from tqdm import tqdm

    calibrate(detector, cfg, plan)
    started = time.perf_counter()
    by_path = {str(p): n for p, n in todo}
    quiet = args.no_progress or not progress
    bar = tqdm(total=len(todo), unit="img", disable=quiet, dynamic_ncols=True)
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
                message = f"{plan.writes}: cannot write the log ({_os_message(e)})"
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
