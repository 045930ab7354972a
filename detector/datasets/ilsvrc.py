"""ILSVRC DET on disk: the XML, the blacklist, and one list of the repack
(``Data/DET/<split>/<name>.JPEG``, ``Annotations/DET/<split>/<name>.xml``,
``ImageSets/DET/<split>.txt`` (``<name> <index>``), classes from ``map_det.txt``). Both
layouts and the named splits (``val1+train_pos``) are read by
:mod:`detector.datasets.ilsvrc_splits` on top of this.

XML is parsed with defusedxml (no entity expansion, no external entities) and read by tag
name: the devkit writes ``<bndbox>`` children in the order xmin, xmax, ymin, ymax.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from defusedxml import ElementTree

from detector.core.config import short_repr
from detector.core.structures import ClassList, ImageRecord, from_inclusive
from detector.datasets.classes import DATA_DIR, default_classes, load_classes

IMAGE_EXTENSIONS = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG")
# Blacklists shipped with the package, by the name ``data.blacklist`` may give instead of a path.
SHIPPED_BLACKLISTS = {"ilsvrc2014": DATA_DIR / "ilsvrc2014_det_val_blacklist.txt"}


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the field."""


def parse_annotation(
    path: str | Path, classes: ClassList
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Read one ILSVRC/VOC-style XML file.

    Returns:
        width, height, boxes (float32[N, 4], internal xyxy), labels (int64[N], 1..K).
    Raises:
        AnnotationError naming the file and the missing or bad field.
    """
    path = Path(path)
    root = read_xml(path)
    width = _int_field(root, "size/width", path, default=0)
    height = _int_field(root, "size/height", path, default=0)
    boxes, labels = [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{path}: object {i}: missing <name>")
        try:
            labels.append(classes.id_of(name))
        except KeyError:
            raise AnnotationError(f"{path}: object {i}: unknown class {name!r}") from None
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"{path}: object {i}: missing <bndbox>")
        coords = [
            _float_field(bb, tag, path, f"object {i}") for tag in ("xmin", "ymin", "xmax", "ymax")
        ]
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise AnnotationError(f"{path}: object {i}: <bndbox> has xmax < xmin or ymax < ymin")
        boxes.append(coords)
    return (
        width,
        height,
        from_inclusive(np.array(boxes, dtype=np.float64)),
        np.array(labels, dtype=np.int64),
    )


def read_xml(path: Path):
    """The root element of an untrusted XML file (defusedxml); AnnotationError naming it."""
    try:
        return ElementTree.parse(str(path)).getroot()
    except Exception as e:  # ParseError, DefusedXmlException, OSError
        raise AnnotationError(
            f"{path}: not a readable XML annotation ({type(e).__name__}: {e})"
        ) from None


def _int_field(node, tag: str, path: Path, default: int) -> int:
    text = node.findtext(tag)
    if text is None:
        return default
    return pixel_count(finite_number(text, tag, path), tag, path, text)


def _float_field(node, tag: str, path: Path, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise AnnotationError(f"{path}: {where}: missing <bndbox>/<{tag}>")
    return finite_number(text, tag, path, where)


MAX_SIDE = 2**31 - 1  # an image side in <size> must fit an int32


def finite_number(text: str, tag: str, path: Path, where: str = "") -> float:
    """The float of an XML field; AnnotationError naming the file (and ``where``) and the
    field when it is not a number or not finite (``nan``, ``inf``, ``1e400``)."""
    at = f"{path}: {where}: " if where else f"{path}: "
    try:
        value = float(text.strip())
    except ValueError:
        raise AnnotationError(f"{at}<{tag}> is not a number: {short_repr(text)}") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{at}<{tag}> is not a finite number: {short_repr(text)}")
    return value


def pixel_count(value: float, tag: str, path: Path, text: str, where: str = "") -> int:
    """A ``<size>`` field as an int; AnnotationError when negative or beyond :data:`MAX_SIDE`."""
    if not 0 <= value <= MAX_SIDE:
        at = f"{path}: {where}: " if where else f"{path}: "
        raise AnnotationError(
            f"{at}<{tag}> must be a pixel count in 0..{MAX_SIDE}, got {short_repr(text)}"
        )
    return int(value)


def read_image_set(path: str | Path) -> list[tuple[str, int]]:
    """``ImageSets/DET/<split>.txt``: ``<name> <index>`` per line (index optional: line number)."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].lstrip("-").isdigit()):
            raise ValueError(f"{path}:{lineno}: expected '<name> <index>', got {short_repr(line)}")
        out.append((parts[0], int(parts[1]) if len(parts) == 2 else len(out) + 1))
    return out


def read_blacklist(path: str | Path, classes: ClassList) -> set[tuple[int, int]]:
    """Devkit blacklist: ``<image_index> <wnid>`` (or ``<image_index> <class_id>``) per line.

    Returns the set of blacklisted ``(image_index, class_id)`` pairs.
    """
    path = Path(path)
    out = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(
                f"{path}:{lineno}: expected '<image_index> <wnid>', got {short_repr(line)}"
            )
        try:
            class_id = int(parts[1]) if parts[1].isdigit() else classes.id_of(parts[1])
        except KeyError:
            raise ValueError(f"{path}:{lineno}: unknown class {short_repr(parts[1])}") from None
        out.add((int(parts[0]), class_id))
    return out


VAL_LIST = "val"  # the list whose indices the devkit's blacklist uses: ImageSets/DET/val.txt


@dataclass(frozen=True)
class SplitBlacklist:
    """A blacklist's pairs on the images of one split.

    Attributes:
        path: the blacklist file.
        pairs: ``(image_index, class_id)``, the index in the split's own list.
        in_file: pairs the blacklist file holds.
        mapped_through: ``val.txt`` when the split is another list and the pairs were
            mapped through its image names; None on ``val`` itself.
    """

    path: Path
    pairs: frozenset[tuple[int, int]]
    in_file: int
    mapped_through: Path | None

    @property
    def outside(self) -> int:
        """Pairs on images that are not in the split."""
        return self.in_file - len(self.pairs)


def blacklist_for_split(
    path: str | Path, classes: ClassList, root: str | Path, split: str
) -> SplitBlacklist:
    """The devkit blacklist (``<val.txt index> <wnid>`` lines) on the images of ``split``.

    Its indices are ``val.txt`` indices. On ``val`` they are the split's own; on any other
    list (R-CNN's ``val1``/``val2``, a subset) each pair goes through the image name that
    ``ImageSets/DET/val.txt`` gives its index, to that image's index in the split. Pairs on
    images outside the split are left out (:attr:`SplitBlacklist.outside`).

    Raises:
        ValueError: a malformed blacklist, or another list on a tree without ``val.txt``
            (then the indices cannot be mapped, and are never read as the list's own).
    """
    path, sets = Path(path), Path(root) / "ImageSets" / "DET"
    val_pairs = read_blacklist(path, classes)
    entries = read_image_set(sets / f"{split}.txt")
    if split == VAL_LIST:
        indices = {index for _, index in entries}
        pairs = frozenset(p for p in val_pairs if p[0] in indices)
        return SplitBlacklist(path, pairs, len(val_pairs), None)
    val_list = sets / f"{VAL_LIST}.txt"
    if not val_list.is_file():
        raise ValueError(
            f"{path}: blacklist indices are val.txt indices, but split {split!r} is another "
            f"list and {val_list} is not there to map them through image names; add it, or "
            "set data.blacklist=none (--blacklist none)"
        )
    name_of = {index: name for name, index in read_image_set(val_list)}
    index_in_split = {name: index for name, index in entries}
    pairs = frozenset(
        (index_in_split[name_of[i]], c)
        for i, c in val_pairs
        if i in name_of and name_of[i] in index_in_split
    )
    return SplitBlacklist(path, pairs, len(val_pairs), val_list)


VAL_SOURCES = ("val", "val1", "val2")  # parts of a named split whose index is the val.txt index


def blacklist_on_val_records(
    path: str | Path, classes: ClassList, records: list[ImageRecord]
) -> SplitBlacklist:
    """The blacklist on the records of a named split (``detector.datasets.ilsvrc_splits``):
    those from ``val``, ``val1`` or ``val2`` carry their val.txt index, so the pairs on
    those indices apply as they are; other records (train, test) have none."""
    path = Path(path)
    val_pairs = read_blacklist(path, classes)
    indices = {r.index for r in records if r.source in VAL_SOURCES}
    pairs = frozenset(p for p in val_pairs if p[0] in indices)
    return SplitBlacklist(path, pairs, len(val_pairs), None)


@dataclass
class IlsvrcDet:
    """One split of an ILSVRC DET tree. Iterating yields :class:`ImageRecord` in list order.

    Args:
        root: folder holding ``Data/``, ``Annotations/``, ``ImageSets/``.
        split: name of the list in ``ImageSets/DET/``.
        classes: class list; default ``<root>/devkit/data/map_det.txt`` or ``<root>/map_det.txt``
            when present, else the 200 ILSVRC classes.
    """

    root: Path
    split: str
    classes: ClassList | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.classes is None:
            self.classes = find_classes(self.root)
        list_path = self.root / "ImageSets" / "DET" / f"{self.split}.txt"
        if not list_path.exists():
            raise FileNotFoundError(f"{list_path}: split list not found")
        self.entries = read_image_set(list_path)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ImageRecord]:
        for name, index in self.entries:
            yield self.record(name, index)

    def record(self, name: str, index: int) -> ImageRecord:
        """Annotations of one image; an image with no XML file (ILSVRC test) has no objects."""
        xml = self.root / "Annotations" / "DET" / self.split / f"{name}.xml"
        if xml.exists():
            width, height, boxes, labels = parse_annotation(xml, self.classes)
        else:
            width, height, boxes, labels = 0, 0, None, None
        rec = ImageRecord(name, index, self.image_path(name), width, height)
        if boxes is not None:
            rec.boxes, rec.labels = boxes, labels
        return rec

    def image_path(self, name: str) -> Path | None:
        return find_image(self.root / "Data" / "DET" / self.split / name)


def find_image(base: Path) -> Path | None:
    """``base`` with the first image extension that exists, else None."""
    for ext in IMAGE_EXTENSIONS:
        if (p := base.with_name(base.name + ext)).exists():
            return p
    return None


CLASS_FILES = (  # a tree's own class list, first found wins
    "devkit/data/map_det.txt",
    "map_det.txt",
    "ILSVRC2014_devkit/data/meta_det.mat",
    "devkit/data/meta_det.mat",
)


def classes_file(root: Path) -> Path | None:
    """The tree's own class list (:data:`CLASS_FILES`), if any."""
    for name in CLASS_FILES:
        if (candidate := root / name).exists():
            return candidate
    return None


def find_classes(root: Path) -> ClassList:
    """The tree's class list, else the 200 shipped ILSVRC classes."""
    path = classes_file(root)
    return load_classes(path) if path is not None else default_classes()
