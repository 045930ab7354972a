"""Named and composed splits of an ILSVRC DET tree (either layout, :mod:`ilsvrc_tree`).

A split is one part or several joined by ``+`` (``val1+train_pos_1k``); records come part
after part, each with ``source`` = its part. Parts:

- ``val``, ``test``: the tree's lists (``index`` = the list's index). A val image without
  XML is an error naming it (``data.missing_xml=skip`` leaves it out instead); test images
  have no XML.
- ``val1``, ``val2``: R-CNN's halves of val (shipped, ``detector/data/rcnn_val{1,2}.txt``),
  the names the tree's val list holds, in the half's order. ``index`` stays the image's
  val.txt index: the devkit's blacklist and a val submission number images that way. On a
  repack whose ``ImageSets/DET/val1.txt`` exists that list is read as it is instead.
- ``train_pos_<N>`` (``train_pos_<k>k`` = k thousand; plain ``train_pos`` takes N from
  ``data.train_pos_boxes``): R-CNN's train_N. For each class X in id order, the images
  listed positive for X (devkit ``train_pos_X.txt``, or the repack's ``train_<X>.txt`` lines
  ``<id> 1``) in list order, as long as X's ground-truth boxes stay at most N (the list is
  cut at the first image that would exceed N). An image chosen for several classes appears
  once. ``complete_for`` = the classes whose train_pos list names the image (2013 images);
  None for the exhaustively annotated ``ILSVRC2014_train_*`` additions. Partial positives
  (``train_part_X.txt``, the repack's ``<id> 0``: some X unboxed) are left out unless
  ``data.train_part=true``; negatives are never read. Ids are resolved through
  :mod:`image_index` (folder-less lines by basename); an id without a file is left out, an
  image without XML is an error naming it.
- any other name: on a repack, ``ImageSets/DET/<name>.txt`` read as a plain list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from detector.core.structures import ClassList, ImageRecord
from detector.datasets.classes import DATA_DIR
from detector.datasets.contents import (
    NO_IMAGE_FILE,
    NOT_IN_VAL_LIST,
    OVER_BOX_CAP,
    TRAIN_PART,
    XML_MISSING,
    SplitContents,
)
from detector.datasets.ilsvrc import (
    AnnotationError,
    IlsvrcDet,
    find_classes,
    find_image,
    parse_annotation,
    read_image_set,
)
from detector.datasets.ilsvrc_tree import REPACK, IlsvrcTree, LayoutError
from detector.datasets.image_index import ImageIdError, ImageIndex, load_index

VAL_HALVES = {"val1": DATA_DIR / "rcnn_val1.txt", "val2": DATA_DIR / "rcnn_val2.txt"}
TRAIN_POS = re.compile(r"train_pos(?:_(\d+)(k?))?")
EXHAUSTIVE_TRAIN_PREFIX = "ILSVRC2014_train_"  # the 2014 additions: all 200 classes boxed
MISSING_XML = ("error", "skip")


@dataclass(frozen=True)
class ReadOptions:
    """The ``data.*`` settings that shape ILSVRC splits (defaults live in DataConfig)."""

    train_pos_boxes: int
    train_part: bool
    missing_xml: str


def split_parts(split: str) -> list[str]:
    """``a+b+c`` -> ``[a, b, c]``; ValueError on an empty part."""
    parts = [p.strip() for p in split.split("+")]
    if any(not p for p in parts):
        raise ValueError(f"split {split!r}: an empty part (parts are joined by '+')")
    return parts


def train_pos_boxes(part: str, default: int) -> int | None:
    """N of a ``train_pos[_<N>|_<k>k]`` part; None for another name."""
    match = TRAIN_POS.fullmatch(part)
    if match is None:
        return None
    if match.group(1) is None:
        return default
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def read_ilsvrc_split(
    root: str | Path, split: str, classes: ClassList | None, options: ReadOptions
) -> SplitContents:
    """The records of ``split`` on the tree at ``root`` (see the module docstring)."""
    if options.missing_xml not in MISSING_XML:
        raise ValueError(f"data.missing_xml {options.missing_xml!r} is not one of error, skip")
    tree = IlsvrcTree.open(root)
    classes = classes if classes is not None else find_classes(tree.root)
    contents = SplitContents([], classes, tree.layout)
    reader = _Reader(tree, classes, options, contents)
    for part in split_parts(split):
        contents.records += reader.part(part)
    return contents


@dataclass
class _Reader:
    tree: IlsvrcTree
    classes: ClassList
    options: ReadOptions
    contents: SplitContents

    def part(self, name: str) -> list[ImageRecord]:
        n = train_pos_boxes(name, self.options.train_pos_boxes)
        if n is not None:
            return self.train_pos(n, name)
        if name in ("val", "test"):
            entries = read_image_set(self.tree.image_list(name))
            return self.listed(name, entries, name)
        if name in VAL_HALVES and self.tree.repack_list(name) is None:
            return self.val_half(name)
        if self.tree.layout == REPACK:  # ImageSets/DET/<name>.txt (FileNotFoundError naming it)
            return self.plain(name)
        raise LayoutError(
            f"{self.tree.root}: unknown split part {name!r}: expected val, test, val1, val2, "
            "train_pos[_<N>] or, on a repack, a list in ImageSets/DET/ (joined by '+')"
        )

    def plain(self, name: str) -> list[ImageRecord]:
        records = list(IlsvrcDet(self.tree.root, name, self.classes))
        for rec in records:
            rec.source = name
        return records

    def listed(self, part: str, entries: list[tuple[str, int]], source: str) -> list[ImageRecord]:
        out = []
        for name, index in entries:
            rec = ImageRecord(name, index, find_image(self.tree.images(part) / name), 0, 0)
            rec.source = source
            folder = self.tree.annotations(part)
            xml = folder / f"{name}.xml" if folder is not None else None
            if xml is not None and xml.is_file():
                out.append(self.annotated(rec, xml))
            elif part == "test":
                out.append(rec)
            elif self.xml_missing(rec, xml, f"{part} image"):
                continue
        return out

    def val_half(self, name: str) -> list[ImageRecord]:
        val_index = dict(read_image_set(self.tree.image_list("val")))
        entries = []
        for image, _ in read_image_set(VAL_HALVES[name]):
            if image in val_index:
                entries.append((image, val_index[image]))
            else:
                self.contents.leave_out(NOT_IN_VAL_LIST, image)
        return self.listed("val", entries, name)

    def annotated(self, rec: ImageRecord, xml: Path) -> ImageRecord:
        rec.width, rec.height, rec.boxes, rec.labels = parse_annotation(xml, self.classes)
        return rec

    def xml_missing(self, rec: ImageRecord, xml: Path | None, what: str) -> bool:
        """Leave ``rec`` out (True) under data.missing_xml=skip, else raise naming it."""
        if self.options.missing_xml == "skip":
            self.contents.leave_out(XML_MISSING, rec.image_id)
            return True
        raise AnnotationError(
            f"{xml}: XML annotation missing for {what} {rec.image_id} "
            "(data.missing_xml=skip leaves such images out)"
        )

    # ---- train_pos ------------------------------------------------------------------------

    def train_pos(self, n: int, source: str) -> list[ImageRecord]:
        index = load_index(self.tree.images("train"))
        ids = range(1, len(self.classes) + 1)
        positives = {c: self.resolved(*self.tree.train_list("pos", c), index) for c in ids}
        pos_for: dict[str, set[int]] = {}
        for c, images in positives.items():
            for image in images:
                pos_for.setdefault(image, set()).add(c)
        parts = {c: self.resolved(*self.tree.train_list("part", c), index) for c in ids}
        seen: dict[str, ImageRecord | None] = {}
        chosen: dict[str, ImageRecord] = {}
        for c in ids:
            extra = parts[c] if self.options.train_part else []
            self.fill(c, n, [*positives[c], *extra], index, pos_for, seen, chosen)
        self.report_left_out(parts, pos_for, seen, chosen)
        records = list(chosen.values())
        for i, rec in enumerate(records, 1):
            rec.index, rec.source = i, source
        return records

    def report_left_out(self, parts, pos_for, seen, chosen) -> None:
        """Positives beyond the box cap, and (data.train_part=false) train_part images."""
        for image in sorted(set(pos_for) - set(chosen)):
            if seen.get(image) is not None or image not in seen:
                self.contents.leave_out(OVER_BOX_CAP, image)
        if not self.options.train_part:
            part_only = {i for images in parts.values() for i in images} - set(pos_for)
            for image in sorted(part_only):
                self.contents.leave_out(TRAIN_PART, image)

    def fill(self, c, n, images, index, pos_for, seen, chosen) -> None:
        """Add class ``c``'s images in order while its boxes stay at most ``n``."""
        boxes = 0
        for image in images:
            if image not in seen:
                seen[image] = self.train_record(image, index, pos_for.get(image, set()))
            rec = seen[image]
            if rec is None:
                continue
            k = int((rec.labels == c).sum())
            if boxes + k > n:
                break
            boxes += k
            chosen.setdefault(image, rec)

    def resolved(self, path: Path, line_ids: list[str], index: ImageIndex) -> list[str]:
        """The ids of list ``path`` as image ids (those without a file stay as listed)."""
        try:
            return [index.resolve(i) or i for i in line_ids]
        except ImageIdError as e:
            raise ImageIdError(f"{path}: {e}") from None

    def train_record(self, image: str, index: ImageIndex, pos: set[int]) -> ImageRecord | None:
        if image not in index.files:
            self.contents.leave_out(NO_IMAGE_FILE, image)
            return None
        exhaustive = image.rpartition("/")[2].startswith(EXHAUSTIVE_TRAIN_PREFIX)
        rec = ImageRecord(image, 0, index.path(image), 0, 0)
        rec.complete_for = None if exhaustive else frozenset(pos)
        xml = self.tree.annotations("train") / f"{image}.xml"
        if xml.is_file():
            return self.annotated(rec, xml)
        self.xml_missing(rec, xml, "train_pos image")
        return None
