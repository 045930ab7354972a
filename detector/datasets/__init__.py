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
from detector.datasets.contents import SplitContents

FORMATS = ("ilsvrc", "coco", "voc")


def open_split(data: DataConfig, split: str) -> tuple[list[ImageRecord], ClassList]:
    """Every record of ``split`` (annotations read, images not decoded) and the class list.

    ``data.root`` must be a real folder (the resolve step fills it in for the demo).
    ILSVRC: either layout, named and composed splits (``val1+train_pos_1k``;
    ``detector.datasets.ilsvrc_splits``). COCO reads ``data.coco_annotations``, with
    ``{split}`` in it replaced by the split (``instances_{split}.json``; without it every
    split is that one file); VOC reads ``ImageSets/Main/<split>.txt``.
    """
    contents = read_split(data, split)
    return contents.records, contents.classes


def read_split(data: DataConfig, split: str) -> SplitContents:
    """What :func:`open_split` reads, with the tree's layout and the images the split's lists
    name but the reader left out, and why (``SplitContents.left_out``)."""
    if not data.root:
        raise ValueError("data.root is empty: resolve the config first (detector.resolve)")
    root = expand(data.root)
    classes = load_classes(expand(data.classes)) if data.classes else None
    if data.format == "ilsvrc":
        from detector.datasets.ilsvrc_splits import ReadOptions, read_ilsvrc_split

        options = ReadOptions(data.train_pos_boxes, data.train_part, data.missing_xml)
        return read_ilsvrc_split(root, split, classes, options)
    if data.format == "voc":
        from detector.datasets.voc import VocDataset

        ds = VocDataset(root, split, classes)
    elif data.format == "coco":
        from detector.datasets.coco import CocoDataset

        if not data.coco_annotations:
            raise ValueError("data.format=coco needs data.coco_annotations (the instances JSON)")
        ds = CocoDataset(expand(data.coco_annotations.replace("{split}", split)), root, classes)
    else:
        raise ValueError(f"data.format {data.format!r} is not one of {', '.join(FORMATS)}")
    return SplitContents(list(ds), ds.classes, data.format)


def split_blacklist(data: DataConfig, classes: ClassList, split: str, records: list[ImageRecord]):
    """The (resolved) ``data.blacklist`` on the images of ``split``: a
    ``detector.datasets.ilsvrc.SplitBlacklist``, or None without a blacklist.

    On an ILSVRC tree its indices are val.txt indices: on a list of the repack's
    ``ImageSets/DET/`` they are mapped to the list's own through the image names, or refused
    when they cannot be (``ilsvrc.blacklist_for_split``); on named splits (``val``,
    ``val1``, ``val2``, compositions; either layout) the records of those parts keep their
    val.txt index and the pairs apply to them directly (``ilsvrc.blacklist_on_val_records``;
    docs/PROTOCOLS.md, "Evaluation"). On COCO and VOC (no val.txt) a blacklist file of
    one's own is read against the split's indices (``records``); the shipped ILSVRC one
    never gets there: the resolve step drops it for those formats.
    """
    from detector.datasets.ilsvrc import (
        SplitBlacklist,
        blacklist_for_split,
        blacklist_on_val_records,
        read_blacklist,
    )

    if not data.blacklist:
        return None
    if data.format == "ilsvrc":
        if (expand(data.root) / "ImageSets" / "DET" / f"{split}.txt").is_file():
            return blacklist_for_split(expand(data.blacklist), classes, expand(data.root), split)
        return blacklist_on_val_records(expand(data.blacklist), classes, records)
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
    "read_split",
    "split_blacklist",
    "with_images",
]
