"""What ``detector.run`` writes: the per-image JSON-lines log, COCO results, an ILSVRC submission.

**JSON lines** (``detections.jsonl``), one record per image, appended as the run goes::

    {"image": "sub/a.jpg", "ok": true, "detections": {<Detections.to_dict()>}}
    {"image": "b.jpg", "ok": false, "error": "b.jpg: truncated or corrupt image data (...)"}

Each record is one ``os.write`` of the full line, then ``fsync``: an interrupted run can at
worst leave one partial *last* line, which :func:`repair_jsonl` drops on resume. Boxes are
the internal xyxy (continuous pixels).

**COCO results**: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``;
``category_id`` is the detector's class id (1..K), ``image_id`` the image's 1-based position
in the sorted list (or the numeric file stem, for COCO-named files).

The ILSVRC submission file is written by ``eval.submission`` (one writer for every command).
Files other than the log are written atomically (``detector.core.atomic``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detector.core.atomic import atomic_write_text


class OutputError(ValueError):
    """An unreadable detections log; the message names the file and line."""


# ---- the JSON-lines log ---------------------------------------------------------------------


def append_record(fd: int, record: dict[str, Any]) -> None:
    """Append one record as one full line: a single write, then fsync.

    ``fd`` is an ``os.open(path, O_WRONLY | O_APPEND | O_CREAT)`` descriptor: with
    ``O_APPEND`` the line lands whole at the end even if another writer shares the file.
    """
    data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    written = os.write(fd, data)
    while written < len(data):  # a regular file takes it all at once; be safe anyway
        written += os.write(fd, data[written:])
    os.fsync(fd)


def read_records(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """Records of a detections log and the byte length of its complete lines.

    A trailing line without a newline, or one that is not JSON, is the mark of an
    interrupted write: it is left out (and not counted in the length).

    Raises:
        OutputError: a complete line before the last one is not a JSON record.
    """
    data = Path(path).read_bytes()
    *complete, partial = data.split(b"\n")  # the piece after the last newline is unfinished
    records: list[dict[str, Any]] = []
    good = 0
    for lineno, line in enumerate(complete, 1):
        try:
            record = _parse_record(line)
        except ValueError as e:
            if lineno == len(complete) and not partial.strip():
                break  # a garbled last line: an interrupted write as well
            raise OutputError(f"{path}:{lineno}: bad record ({e})") from None
        if record is not None:
            records.append(record)
        good += len(line) + 1
    return records, good


def _parse_record(line: bytes) -> dict[str, Any] | None:
    """One log line -> record (None for a blank line); ValueError when it is not one."""
    if not line.strip():
        return None
    record = json.loads(line)
    if not isinstance(record, dict) or "image" not in record or "ok" not in record:
        raise ValueError("not a record with 'image' and 'ok'")
    return record


def repair_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """For ``--resume``: keep one ok record per image, drop failures and a partial last line.

    Failed images are retried by the resumed run, so their old records go; if an image
    has several ok records (a log concatenated by hand), the first one is kept. The file
    is rewritten atomically only when something changes.

    Returns:
        the ok records kept, in file order.
    """
    path = Path(path)
    records, good = read_records(path)
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in records:
        if r["ok"] and r["image"] not in seen:
            seen.add(r["image"])
            kept.append(r)
    if len(kept) != len(records) or good != path.stat().st_size:
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept)
        atomic_write_text(path, lines)
    return kept


# ---- final outputs --------------------------------------------------------------------------


def coco_results(records: Iterable[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """COCO ``loadRes`` entries from ``(image_id, ok record)`` pairs."""
    out = []
    for image_id, record in records:
        det = record["detections"]
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"], strict=True):
            x1, y1, x2, y2 = box
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": float(score),
                }
            )
    return out


def coco_image_ids(names: list[str]) -> list[int]:
    """Numeric file stems (COCO's ``000000397133.jpg`` -> 397133) when all are numeric and
    distinct, else 1-based positions."""
    stems = [Path(n).stem for n in names]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(names) + 1))
