"""An index of the image files under one folder: image id (relative path without the
extension) -> file, and basename -> file for list lines that omit the folders.

ILSVRC's training lists name ~470,000 images in hundreds of synset folders; the devkit's
lists give ``<folder>/<name>`` and some lines only ``<name>``. Walking the folder once and
keeping the result on disk (``<cache>/image_index/<hash of the folder's path>.json``,
written atomically) makes every later read a dictionary lookup. The cached index is used
while its signature still matches: the modification times of the folder and of each folder
up to two levels inside it (a file added to or removed from a synset folder changes that
folder's time); otherwise it is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from detector.core.atomic import atomic_write_text
from detector.core.paths import cache_root
from detector.datasets.ilsvrc import IMAGE_EXTENSIONS

INDEX_VERSION = 1


class ImageIdError(ValueError):
    """A list line naming an image ambiguously (one basename, several files)."""


@dataclass
class ImageIndex:
    """The image files under ``folder``, by id and by basename.

    Attributes:
        folder: the indexed folder.
        files: image id (relative POSIX path without extension) -> relative file path.
    """

    folder: Path
    files: dict[str, str]
    _by_name: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for image_id in self.files:
            self._by_name.setdefault(image_id.rpartition("/")[2], []).append(image_id)

    def __len__(self) -> int:
        return len(self.files)

    def resolve(self, line_id: str) -> str | None:
        """The image id a list line names: itself when indexed, else the one file with
        its basename (lines that omit the folders, or name them otherwise than the tree);
        None when no file has it.

        Raises:
            ImageIdError: a basename that several files share.
        """
        line_id = line_id.strip("/")
        if line_id in self.files:
            return line_id
        candidates = self._by_name.get(line_id.rpartition("/")[2], [])
        if not candidates:
            return None
        if len(candidates) > 1:
            raise ImageIdError(
                f"{self.folder}: image {line_id!r} is ambiguous: {', '.join(sorted(candidates)[:3])}"
            )
        return candidates[0]

    def path(self, image_id: str) -> Path:
        """The file of an indexed image id."""
        return self.folder / self.files[image_id]


SIGNATURE_DEPTH = (
    2  # folder levels whose times make the signature (the repack's synset folders are 2 deep)
)


def signature(folder: Path) -> dict[str, int]:
    """Modification times (ns) of ``folder`` and of the folders up to
    :data:`SIGNATURE_DEPTH` levels inside it, by relative path."""
    out = {".": folder.stat().st_mtime_ns}
    level = [folder]
    for _ in range(SIGNATURE_DEPTH):
        below = []
        for parent in level:
            with os.scandir(parent) as entries:
                for entry in entries:
                    if entry.is_dir():
                        path = Path(entry.path)
                        out[path.relative_to(folder).as_posix()] = entry.stat().st_mtime_ns
                        below.append(path)
        level = below
    return out


def scan(folder: Path) -> dict[str, str]:
    """Walk ``folder``: image id -> relative path of every image file, sorted."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext in IMAGE_EXTENSIONS:
                files.setdefault((rel / stem).as_posix(), (rel / name).as_posix())
    return files


def index_file(folder: Path) -> Path:
    """Where the index of ``folder`` is cached."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
    return cache_root() / "image_index" / f"{key}.json"


def load_index(folder: str | Path) -> ImageIndex:
    """The index of ``folder``: the cached one when its signature matches, else a new scan
    (then cached). A missing folder has an empty index."""
    folder = Path(folder)
    if not folder.is_dir():
        return ImageIndex(folder, {})
    sig = signature(folder)
    cached = _read_cached(index_file(folder), folder, sig)
    if cached is not None:
        return ImageIndex(folder, cached)
    files = scan(folder)
    record = {"version": INDEX_VERSION, "folder": str(folder.resolve()), "signature": sig}
    with contextlib.suppress(OSError):  # a read-only cache costs a rescan next time, no more
        atomic_write_text(index_file(folder), json.dumps({**record, "files": files}))
    return ImageIndex(folder, files)


def _read_cached(path: Path, folder: Path, sig: dict[str, int]) -> dict[str, str] | None:
    """The cached files when the cache entry is for this folder and signature (an unreadable
    entry is rebuilt, never an error)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (
        isinstance(data, dict)
        and data.get("version") == INDEX_VERSION
        and data.get("folder") == str(folder.resolve())
        and data.get("signature") == sig
        and isinstance(data.get("files"), dict)
    )
    return data["files"] if same else None
