"""What ``detector.run`` writes: the per-image JSON-lines log, COCO results, an ILSVRC submission.

**JSON lines** (``detections.jsonl``): a header, then one record per image, appended as the
run goes::

    {"header": {"log": "detector.run", "version": 2, "images": "/abs/photos",
                "root": "/abs/photos", "settings": {...}, "settings_digest": "...",
                "models": {"members": ["<sha256>", ...], "multibox": null, "heads": null}}}
    {"image": "sub/a.jpg", "ok": true, "file": {"size": 51234, "mtime_ns": ..., "sha256": "..."},
     "detections": {<Detections.to_dict()>}}
    {"image": "b.jpg", "ok": false, "error": "b.jpg: truncated or corrupt image data (...)"}

The header says what the records were computed on: the images source (absolute path; image
names are relative to ``root``), the settings that change detections (:func:`detection_settings`) and the SHA-256 of every
checkpoint's bytes. Each ok record carries its image file's size, mtime and SHA-256. A resume
compares all three (:func:`header_mismatch`), so a log is never continued with other
images, settings or models. Logs before version 2 have no header and are not resumed.

Each record is one ``os.write`` of the full line, then ``fsync``: an interrupted run can at
worst leave one partial *last* line, which :func:`repair_jsonl` drops on resume (and
:func:`append_record` cuts off itself when the write fails). Boxes are the internal xyxy
(continuous pixels).

**COCO results**: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``;
``category_id`` is the detector's class id (1..K), ``image_id`` the image's 1-based position
in the sorted list (or the numeric file stem, for COCO-named files).

The ILSVRC submission file is written by ``eval.submission`` (one writer for every command).
Files other than the log are written atomically (``detector.core.atomic``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detector.core.atomic import atomic_write_text
from detector.core.config import Config
from detector.core.digests import file_sha256, settings_digest

LOG_VERSION = 2


class OutputError(ValueError):
    """An unreadable detections log; the message names the file and line."""


# ---- the header -----------------------------------------------------------------------------

# Settings that do not change the detections of an image (how fast, where, with what output).
_NOT_DETECTION_SETTINGS = {
    "proposals.selective_search.workers",
    "proposals.selective_search.cache_dir",
    "proposals.multibox.checkpoint",  # its content is in the header's models
    "model.checkpoints",
    "model.checkpoint_dir",
    "inference.device",
    "inference.chunk_size",
    "inference.threads",
    "inference.compile",
    "inference.vis_threshold",
}
# MultiBox's training settings (the network it runs is the checkpoint's).
_MULTIBOX_AT_INFERENCE = {"enabled", "top_k", "nms_iou", "num_priors", "input_size"}


def detection_settings(cfg: Config) -> dict[str, Any]:
    """The settings of a resolved config that change an image's detections, as dotted keys.

    Proposals (selective search, MultiBox at inference), the warp fallbacks (``model.*``) and
    the scoring and NMS settings (``inference.*``); not the device, threads, caches or outputs,
    and not the checkpoints' paths (their contents are in :func:`model_digests`).
    """
    d = cfg.to_dict()
    mb = {k: v for k, v in d["proposals"]["multibox"].items() if k in _MULTIBOX_AT_INFERENCE}
    sections = {
        "proposals.selective_search": d["proposals"]["selective_search"],
        "proposals.multibox": mb,
        "model": d["model"],
        "inference": d["inference"],
    }
    flat = {f"{name}.{k}": v for name, values in sections.items() for k, v in values.items()}
    return {k: v for k, v in sorted(flat.items()) if k not in _NOT_DETECTION_SETTINGS}


def model_digests(cfg: Config) -> dict[str, Any]:
    """SHA-256 of the bytes of every member checkpoint (in order), of MultiBox's and of the
    heads file (each None when not used).

    ``cfg`` is resolved: ``model.checkpoints`` lists the members.
    """
    from detector.build import heads_path, uses_heads

    mb = cfg.proposals.multibox
    return {
        "members": [file_sha256(p) for p in cfg.model.checkpoints],
        "multibox": file_sha256(mb.checkpoint) if mb.enabled and mb.checkpoint else None,
        "heads": file_sha256(heads_path(cfg)) if uses_heads(cfg.inference) else None,
    }


def log_header(
    images: str, root: str, settings: dict[str, Any], models: dict[str, Any]
) -> dict[str, Any]:
    """The first record of a log: what its detections were computed on.

    Args:
        images: the images source (``--images``: a folder, list or image), absolute.
        root: the folder the records' image names are relative to, absolute.
    """
    digest = settings_digest(settings)
    return {
        "header": {
            "log": "detector.run",
            "version": LOG_VERSION,
            "images": images,
            "root": root,
            "settings": settings,
            "settings_digest": digest,
            "models": models,
        }
    }


def header_mismatch(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why a log with header ``old`` cannot be continued by a run with header ``new`` (both
    :func:`log_header` records), or None when it can."""
    if old is None:
        return "it has no header (written by an older version), so what it was run on is unknown"
    o, n = old["header"], new["header"]
    if o.get("version") != n["version"]:
        return f"it is a version {o.get('version')} log, this is version {n['version']}"
    problems = []
    if o.get("images") != n["images"]:
        problems.append(f"it was written for the images of {o.get('images')}, not {n['images']}")
    old_settings = o.get("settings") or {}
    changed = [k for k in sorted(set(old_settings) | set(n["settings"]))
               if old_settings.get(k, "<unset>") != n["settings"].get(k, "<unset>")]  # fmt: skip
    if changed:
        shown = ", ".join(
            f"{k} {_short(old_settings.get(k, '<unset>'))} -> {_short(n['settings'].get(k, '<unset>'))}"
            for k in changed[:3]
        )
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        problems.append(f"other settings ({shown}{more})")
    om, nm = o.get("models") or {}, n["models"]
    old_members, new_members = om.get("members") or [], nm["members"]
    if len(old_members) != len(new_members):
        problems.append(f"other models ({len(old_members)} members, now {len(new_members)})")
    else:
        which = [
            str(i) for i, (a, b) in enumerate(zip(old_members, new_members, strict=True)) if a != b
        ]
        if which:
            problems.append(f"other models (member {', '.join(which)} checkpoint contents)")
    if om.get("multibox") != nm["multibox"]:
        problems.append("another MultiBox checkpoint (or MultiBox on/off)")
    if om.get("heads") != nm.get("heads"):
        problems.append("other box-regression/SVM heads (or the heads on/off)")
    return "; ".join(problems) or None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the JSON-lines log ---------------------------------------------------------------------


def append_record(fd: int, record: dict[str, Any]) -> None:
    """Append one record as one full line: a single write, then fsync.

    ``fd`` is an ``os.open(path, O_WRONLY | O_APPEND | O_CREAT)`` descriptor: with
    ``O_APPEND`` the line lands whole at the end even if another writer shares the file.

    Raises:
        OSError: the write failed (disk full, read-only, I/O error); the file is cut back to
            its length before the call, so no partial line stays behind.
    """
    data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    start = os.fstat(fd).st_size
    try:
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it all at once; be safe anyway
            written += os.write(fd, data[written:])
        os.fsync(fd)
    except OSError:
        # Disk full, quota, I/O error: take the partial line back so the log stays whole.
        # (If even that fails, the next resume drops the partial last line.)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def read_log(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """The header (None when there is none), the records and the byte length of the complete
    lines of a detections log.

    A trailing line without a newline, or one that is not JSON, is the mark of an
    interrupted write: it is left out (and not counted in the length).

    Raises:
        OutputError: a complete line before the last one is not a JSON record, or a header
            stands elsewhere than on the first line.
    """
    data = Path(path).read_bytes()
    *complete, partial = data.split(b"\n")  # the piece after the last newline is unfinished
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    good = 0
    for lineno, line in enumerate(complete, 1):
        try:
            record = _parse_record(line, first=lineno == 1)
        except ValueError as e:
            if lineno == len(complete) and not partial.strip():
                break  # a garbled last line: an interrupted write as well
            raise OutputError(f"{path}:{lineno}: bad record ({e})") from None
        if record is not None and "header" in record:
            header = record
        elif record is not None:
            records.append(record)
        good += len(line) + 1
    return header, records, good


def read_records(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The image records of a log (:func:`read_log` without the header) and its good length."""
    _, records, good = read_log(path)
    return records, good


def _parse_record(line: bytes, first: bool = False) -> dict[str, Any] | None:
    """One log line -> record (None for a blank line); ValueError when it is not one."""
    if not line.strip():
        return None
    record = json.loads(line)
    if first and isinstance(record, dict) and isinstance(record.get("header"), dict):
        return record
    if not isinstance(record, dict) or "image" not in record or "ok" not in record:
        raise ValueError("not a record with 'image' and 'ok'")
    return record


def repair_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """For ``--resume``: keep the header and one ok record per image; drop failures and a
    partial last line.

    Failed images are retried by the resumed run, so their old records go; if an image
    has several ok records (a log concatenated by hand), the first one is kept. The file
    is rewritten atomically only when something changes.

    Returns:
        the ok records kept, in file order.
    """
    path = Path(path)
    header, records, good = read_log(path)
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in records:
        if r["ok"] and r["image"] not in seen:
            seen.add(r["image"])
            kept.append(r)
    if len(kept) != len(records) or good != path.stat().st_size:
        lines = [header] if header is not None else []
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines + kept)
        atomic_write_text(path, text)
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
