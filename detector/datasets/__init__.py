"""Dataset readers: ILSVRC DET, COCO json and PASCAL VOC, all yielding :class:`ImageRecord`.

:func:`open_split` is the one entry point the commands use: it reads one split of the
dataset a (resolved) ``DataConfig`` names, whatever its format.
"""

from __future__ import annotations

from pathlib import Path

from detector.core.config import DataConfig
from detector.core.paths import expand
from detector.core.structures import ClassList, ImageRecord
from detector.datasets.classes import default_classes, load_classes

FORMATS = ("ilsvrc", "coco", "voc")


def open_split(data: DataConfig, split: str) -> tuple[list[ImageRecord], ClassList]:
    """Every record of ``split`` (annotations read, images not decoded) and the class list.

    ``data.root`` must be a real folder (the resolve step fills it in for the demo).
    COCO reads ``data.coco_annotations``, with ``{split}`` in it replaced by the split
    (``instances_{split}.json``; without it every split is that one file); VOC reads
    ``ImageSets/Main/<split>.txt``.
    """
    if not data.root:
        raise ValueError("data.root is empty: resolve the config first (detector.resolve)")
    root = expand(data.root)
    classes = load_classes(expand(data.classes)) if data.classes else None
    if data.format == "ilsvrc":
        from detector.datasets.ilsvrc import IlsvrcDet

        ds = IlsvrcDet(root, split, classes)
    elif data.format == "voc":
        from detector.datasets.voc import VocDataset

        ds = VocDataset(root, split, classes)
    elif data.format == "coco":
        from detector.datasets.coco import CocoDataset

        if not data.coco_annotations:
            raise ValueError("data.format=coco needs data.coco_annotations (the instances JSON)")
        ds = CocoDataset(expand(data.coco_annotations.replace("{split}", split)), root, classes)
    else:
        raise ValueError(f"data.format {data.format!r} is not one of {', '.join(FORMATS)}")
    return list(ds), ds.classes


def split_blacklist(data: DataConfig, classes: ClassList, split: str, records: list[ImageRecord]):
    """The (resolved) ``data.blacklist`` on the images of ``split``: a
    ``detector.datasets.ilsvrc.SplitBlacklist``, or None without a blacklist.

    On an ILSVRC tree its indices are val.txt indices, mapped to the split's own through
    the image names, or refused when they cannot be (``ilsvrc.blacklist_for_split``;
    docs/PROTOCOLS.md, "Evaluation"). On COCO and VOC (no val.txt) a blacklist file of
    one's own is read against the split's indices (``records``); the shipped ILSVRC one
    never gets there: the resolve step drops it for those formats.
    """
    from detector.datasets.ilsvrc import SplitBlacklist, blacklist_for_split, read_blacklist

    if not data.blacklist:
        return None
    if data.format == "ilsvrc":
        return blacklist_for_split(expand(data.blacklist), classes, expand(data.root), split)
    path = expand(data.blacklist)
    pairs = read_blacklist(path, classes)
    indices = {r.index for r in records}
    return SplitBlacklist(path, frozenset(p for p in pairs if p[0] in indices), len(pairs), None)


def with_images(records: list[ImageRecord]) -> list[ImageRecord]:
    """The records that have an image file (training and detection need pixels)."""
    return [r for r in records if r.path is not None and Path(r.path).exists()]


__all__ = [
    "FORMATS",
    "default_classes",
    "load_classes",
    "open_split",
    "split_blacklist",
    "with_images",
]
