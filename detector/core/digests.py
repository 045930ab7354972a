"""Content digests of files: what a run's log records to recognise its inputs on ``--resume``.

A file is identified by its size, its modification time (nanoseconds) and the SHA-256 of its
bytes. Size and mtime are cheap to compare; the digest decides when they differ (a file that
was touched or copied back keeps its identity, one whose bytes changed does not).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def settings_digest(settings: Any) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as canonical JSON (sorted keys): the short
    name of a set of settings in checkpoints, training states and detection logs."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file (OSError when it cannot be read)."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def same_file(path: str | os.PathLike, identity: dict[str, Any]) -> bool:
    """Whether ``path`` still holds the bytes ``identity`` (from :func:`file_identity`) describes.

    Equal size and mtime are taken as unchanged; otherwise the digest decides. A missing or
    unreadable file is not the same.
    """
    try:
        st = Path(path).stat()
        if st.st_size == identity.get("size") and st.st_mtime_ns == identity.get("mtime_ns"):
            return True
        return st.st_size == identity.get("size") and file_sha256(path) == identity.get("sha256")
    except OSError:
        return False
