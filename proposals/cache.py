"""On-disk cache of proposals: one ``.npz`` per image and settings, written atomically.

Selective search costs ~0.6 s per image and is needed by every training epoch and every
evaluation run, so its boxes are computed once. The key hashes the pixels (not the path: a
re-encoded or edited file gets a new key), the settings and :data:`CACHE_VERSION`; bump the
version when the algorithm's output changes for the same settings. A corrupt or truncated
entry (a killed writer on a filesystem without atomic rename, a full disk) is reported in
one line, deleted and recomputed. A cache that cannot be written (a read-only folder, a
full disk) is reported once, in one line naming the folder; from then on the cache only
reads, and the caller goes on computing what it lacks.

Example::

    from proposals.cache import ProposalCache, cache_key

    cache = ProposalCache("~/.cache/inception-rcnn/proposals")
    key = cache_key(image, settings)
    proposals = cache.get(key)
    if proposals is None:
        proposals = compute(image)
        cache.put(key, proposals)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from detector.core.structures import Proposals

CACHE_VERSION = 1  # bump when the proposals for the same image and settings change
_KEY = re.compile(r"^[0-9a-f]{64}$")


def cache_key(image: np.ndarray, settings: dict[str, Any]) -> str:
    """sha256 hex of the version, the image's dtype, shape and pixels, and the settings.

    Settings are canonical JSON (sorted keys; tuples and lists hash alike), so
    ``{"ks": (100, 200)}`` and ``{"ks": [100, 200]}`` share a key.
    """
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION,
        "dtype": image.dtype.str,
        "shape": list(image.shape),
        "settings": settings,
    }
    digest.update(
        json.dumps(header, sort_keys=True, separators=(",", ":"), default=_json_default).encode()
    )
    digest.update(memoryview(image).cast("B") if image.size else b"")
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cache_key: setting of type {type(value).__name__} is not JSON-serialisable")


class ProposalCache:
    """Proposals stored as ``<directory>/<key[:2]>/<key>.npz`` (arrays boxes, scores, source)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        self.writable = True  # False after the first failed write (warned once)
        self.readable = True  # False after the first refused read (warned once)
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        """The entry's file; the two-character subdirectory keeps directories small."""
        if not _KEY.match(key):
            raise ValueError(f"ProposalCache: {key!r} is not a sha256 hex key")
        return self.directory / key[:2] / f"{key}.npz"

    def get(self, key: str, image_size: tuple[int, int] | None = None) -> Proposals | None:
        """The stored proposals, or None when absent or corrupt (a corrupt entry is deleted).

        Entries are untrusted: arrays of the wrong shape or kind, non-finite boxes, boxes
        with ``x2 < x1`` or below 0, or (given ``image_size``, ``(width, height)``) beyond
        the image are corrupt. An entry that cannot be read (permissions) is a miss,
        warned about once."""
        path = self.path(key)
        if not self.readable:
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return _checked(data["boxes"], data["scores"], data["source"], image_size)
        except (FileNotFoundError, NotADirectoryError):  # no entry (or no folder) there
            return None
        except PermissionError as e:
            self._give_up("readable", f"cannot read ({_reason(e)}); going on without it")
            return None
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
            warnings.warn(
                f"{path}: corrupt proposal cache entry ({type(e).__name__}: {e}); recomputing",
                RuntimeWarning,
                stacklevel=2,
            )
            with contextlib.suppress(OSError):  # a read-only cache keeps it; still a miss
                path.unlink(missing_ok=True)
            return None

    def put(self, key: str, proposals: Proposals) -> Path | None:
        """Write the entry atomically (temporary file + ``os.replace``); returns its path.

        When the write fails (read-only folder, full disk: any ``OSError``) nothing is left
        behind, one warning names the folder, later calls write nothing, and None is
        returned: the caller goes on without caching.
        """
        path = self.path(key)
        if not self.writable:
            return None
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(
                    f, boxes=proposals.boxes, scores=proposals.scores, source=proposals.source
                )
            os.replace(tmp, path)
        except OSError as e:
            self._give_up("writable", f"cannot write ({_reason(e)}); going on without caching")
            return None
        finally:
            if tmp is not None and os.path.exists(tmp):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return path

    def _give_up(self, what: str, why: str) -> None:
        """Turn reading or writing off; the first thread to do so warns, in one line."""
        with self._lock:
            if not getattr(self, what):
                return
            setattr(self, what, False)
        warnings.warn(f"{self.directory}: proposal cache {why}", RuntimeWarning, stacklevel=3)


def _checked(
    boxes: np.ndarray, scores: np.ndarray, source: np.ndarray, image_size: tuple[int, int] | None
) -> Proposals:
    """Proposals from an entry's arrays; ValueError when they cannot be an entry we wrote."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind != "f":
        raise ValueError(f"boxes of shape {boxes.shape} and dtype {boxes.dtype}, not float[N, 4]")
    if scores.ndim != 1 or scores.dtype.kind != "f" or source.ndim != 1 or source.dtype.kind != "u":
        raise ValueError("scores or source of the wrong shape or kind")
    if not np.isfinite(boxes).all():
        raise ValueError("non-finite boxes")
    if len(boxes) and (
        (boxes[:, :2] < 0).any()
        or (boxes[:, 2] < boxes[:, 0]).any()
        or (boxes[:, 3] < boxes[:, 1]).any()
    ):
        raise ValueError("boxes with negative or reversed edges")
    if image_size is not None and len(boxes):
        width, height = image_size
        if (boxes[:, 2] > width).any() or (boxes[:, 3] > height).any():
            raise ValueError(f"boxes beyond the {width}x{height} image")
    return Proposals(boxes, scores, source)


def _reason(e: OSError) -> str:
    return " ".join(str(e.strerror or e).split()) or type(e).__name__
