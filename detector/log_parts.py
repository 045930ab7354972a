"""A detections log written by several processes: one part per share, merged at the end.

A run split over torchrun ranks or ``--shard I/N`` tasks never appends to
``detections.jsonl`` from two processes. Share ``I`` of ``N`` appends to its own part,
``<log folder>/<log stem>.parts/part-I-of-N.jsonl`` (same header, same records as
``detector.outputs`` describes). Merging (rank 0 when every rank is done, or the next
whole run with ``--resume``) reads the log and every part, keeps one record per image
(the first ok one: the log's, then the parts' in name order; else the last failure),
writes the log atomically with the records in the order of the image list, exactly as one
process writes them, and only then deletes the parts. Every whole run ends with this step,
so a finished log is always in image-list order, resumed or not. A merge interrupted
before the deletion leaves records that the next merge finds twice and keeps once.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from detector.core.atomic import atomic_write_text
from detector.core.distributed import Shard
from detector.outputs import OutputError, header_mismatch, read_log


def parts_dir(log: Path) -> Path:
    return log.with_name(f"{log.stem}.parts")


def part_path(log: Path, shard: Shard) -> Path:
    return parts_dir(log) / f"part-{shard.index}-of-{shard.count}.jsonl"


def list_parts(log: Path) -> list[Path]:
    folder = parts_dir(log)
    return sorted(folder.glob("part-*-of-*.jsonl")) if folder.is_dir() else []


def read_checked(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of a log or part written for ``header``'s images, settings and models.

    Raises:
        OutputError: the file is unreadable, or was written for something else.
    """
    old, records, _ = read_log(path)
    if old is None and not records:
        return []
    why = header_mismatch(old, header)
    if why:
        raise OutputError(f"{path}: cannot resume: {why}; pass --overwrite to start over")
    return records


def collect(log: Path, header: dict[str, Any], parts: list[Path]) -> dict[str, dict[str, Any]]:
    """One record per image from the log (if any) and ``parts``: the first ok record, else
    the last failure."""
    chosen: dict[str, dict[str, Any]] = {}
    sources = ([log] if log.exists() else []) + parts
    for path in sources:
        for r in read_checked(path, header):
            old = chosen.get(r["image"])
            if old is None or not old["ok"]:  # ok replaces a failure, a later failure an earlier
                chosen[r["image"]] = r
    return chosen


def merge_parts(log: Path, header: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Fold every part into the log, delete the parts; the log's records end in the order of
    ``names`` (rewritten atomically only when parts were merged or the order differs, e.g.
    after a resume appended the images it retried).

    Returns:
        the log's records by image name (ok and failed).
    Raises:
        OutputError: a part or the log written for other images, settings or models.
        OSError: the log cannot be written (the parts are then kept).
    """
    parts = list_parts(log)
    records = collect(log, header, parts)
    order = {n: i for i, n in enumerate(names)}
    ranked = sorted(records.values(), key=lambda r: order.get(r["image"], len(order)))
    if parts or [r["image"] for r in ranked] != list(records) or not log.exists():
        lines = [header, *ranked]
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)
        atomic_write_text(log, text)
    remove_parts(log)
    return records


def remove_parts(log: Path) -> None:
    for part in list_parts(log):
        part.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        parts_dir(log).rmdir()


def part_counts(log: Path) -> set[int]:
    """The share counts N of the parts present (``part-I-of-N``)."""
    counts = set()
    for part in list_parts(log):
        try:
            counts.add(int(part.stem.rsplit("-of-", 1)[1]))
        except (IndexError, ValueError):
            raise OutputError(f"{part}: not a part name (part-I-of-N.jsonl)") from None
    return counts
