"""What ``detector.run`` checks before a model is loaded: the image indices, the run folder,
outputs that would overwrite inputs or each other, the log (or its parts) to continue, that
the folders can be written. Each failure is one ``UsageError`` (exit 2) or ``OutputFailure``
(exit 3) naming the file."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from detector.core.config import Config
from detector.core.distributed import Shard
from detector.core.messages import one_line

NEW_RUN_DIR = "runs/detect/predict"  # then predict2, predict3, ...


class UsageError(ValueError):
    """A bad flag combination or input file (exit status 2)."""


class OutputFailure(OSError):
    """An output that cannot be written (exit status 3); the message names the path."""


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
    candidates = run_dir_candidates(Path(NEW_RUN_DIR))
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


def check_paths(cfg: Config, args: Any, listing: Any, log: Path, summary: Path) -> None:
    """Refuse outputs that would overwrite an input or each other (``args``: the run's
    ``detector.run.RunOptions``).

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
    (its header), and every recorded image must still hold the bytes it had. The parts of
    a sharded run (``detector.log_parts``) are merged into the log first. Nothing else is
    created or truncated here: that waits until the detector is built, so a setup error
    leaves an existing log as it was (a resumed log only loses its failed records and a
    partial last line, and gains its parts' records).
    """
    from detector.log_parts import list_parts, merge_parts, parts_dir
    from detector.outputs import OutputError, header_mismatch, read_log, repair_jsonl

    parts = list_parts(log)
    if not log.exists() and not parts:
        return None
    if not resume:
        if overwrite:
            return None
        if not log.exists():
            raise UsageError(
                f"{parts_dir(log)} holds the parts of a sharded run: pass --resume to merge "
                "and continue them or --overwrite to start over"
            )
        raise UsageError(f"{log} exists: pass --resume to continue it or --overwrite to replace it")
    if parts:
        try:
            merge_parts(log, header, listing.names)
        except OutputError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise OutputFailure(f"{log}: cannot merge the parts ({_os_message(e)})") from None
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
    check_unchanged(log, listing, recorded)
    try:
        return {r["image"]: r for r in repair_jsonl(log)}
    except OSError as e:
        raise OutputFailure(f"{log}: cannot rewrite the log ({_os_message(e)})") from None


def check_share(
    log: Path, shard: Shard, header: dict[str, Any], listing: Any, *, resume: bool, overwrite: bool
) -> tuple[dict[str, dict[str, Any]], bool]:
    """For a ``--shard`` task: the ok records of the log and of every part (all images), and
    whether this task's part (``detector.log_parts.part_path``) starts fresh (False: it is
    continued).

    Other tasks may be writing their parts meanwhile; only ``part`` is ever rewritten.
    """
    from detector.log_parts import collect, list_parts, part_counts, part_path
    from detector.outputs import OutputError, read_log, repair_jsonl

    part = part_path(log, shard)
    if overwrite:
        others = [str(log)] if log.exists() else []
        others += [f"parts of {n} shards" for n in sorted(part_counts(log) - {shard.count})]
        if others:
            raise UsageError(
                f"--overwrite with --shard replaces this share's part only, but "
                f"{' and '.join(others)} exist: remove them, or run --overwrite without --shard"
            )
        return {}, True
    if not resume:
        for path in (part, log):
            if path.exists():
                raise UsageError(
                    f"{path} exists: pass --resume to continue it or --overwrite to replace it"
                )
    try:
        records = collect(log, header, list_parts(log))
    except OutputError as e:
        raise UsageError(str(e)) from None
    done = {n: r for n, r in records.items() if r["ok"]}
    check_unchanged(log, listing, done)
    if not part.exists():
        return done, True
    try:
        repair_jsonl(part)  # its failures are retried, a partial last line dropped
    except OSError as e:
        raise OutputFailure(f"{part}: cannot rewrite the part ({_os_message(e)})") from None
    return done, read_log(part)[0] is None


def check_unchanged(log: Path, listing: Any, recorded: dict[str, dict[str, Any]]) -> None:
    """Every recorded image still holds the bytes it had (else a resume is refused)."""
    from detector.core.digests import same_file

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


def check_writable(folder: Path) -> None:
    """Create ``folder`` and a file in it, before any model is loaded (exit 3 if it fails)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputFailure(f"{folder}: cannot write here ({_os_message(e)})") from None


def _os_message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return one_line(e)
