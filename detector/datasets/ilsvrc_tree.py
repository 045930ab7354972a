"""Where an ILSVRC DET tree keeps its images, XML and lists, in either of its two layouts.

``repack`` (the later ImageNet repack, also the demo's)::

    Data/DET/<part>/<id>.JPEG   Annotations/DET/<part>/<id>.xml   ImageSets/DET/<list>.txt
    ImageSets/DET/train_<X>.txt   '<id> 1' (positive for class X: every X boxed),
                                  '<id> 0' (partial: some X unboxed), '<id> -1' (negative)

``ilsvrc2014`` (the 2014 tarballs as extracted)::

    ILSVRC2013_DET_val/<name>.JPEG          ILSVRC2013_DET_bbox_val/<name>.xml
    ILSVRC2013_DET_test/<name>.JPEG         (no test XML)
    ILSVRC2014_DET_train/<id>.JPEG          ILSVRC2014_DET_bbox_train/<id>.xml
        <id> = <wnid>/<wnid>_<n> (2013), ILSVRC2014_train_<k>/ILSVRC2014_train_<z> (2014)
    ILSVRC2014_devkit/data/det_lists/        val.txt, test.txt ('<name> <index>'),
        train_pos_X.txt, train_part_X.txt, train_neg_X.txt ('<id>' per line)

The layout is told by the folders: ``ImageSets/DET`` means the repack, the 2014 image
folders the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.core.config import short_repr

REPACK, DISTRIBUTION = "repack", "ilsvrc2014"
LAYOUTS = (REPACK, DISTRIBUTION)
DEVKIT_FOLDERS = ("ILSVRC2014_devkit", "devkit")  # <root>/<one of these>/data/det_lists
# The 2014 distribution's folders per part: (images, XML).
DISTRIBUTION_PARTS = {
    "val": ("ILSVRC2013_DET_val", "ILSVRC2013_DET_bbox_val"),
    "test": ("ILSVRC2013_DET_test", None),
    "train": ("ILSVRC2014_DET_train", "ILSVRC2014_DET_bbox_train"),
}
TRAIN_KINDS = ("pos", "part", "neg")  # the devkit's train_<kind>_X lists


class LayoutError(ValueError):
    """A folder that is neither ILSVRC layout, or lacks a list the split needs."""


def detect_layout(root: Path) -> str:
    """``repack`` or ``ilsvrc2014``; LayoutError naming the folder when it is neither."""
    if (root / "ImageSets" / "DET").is_dir():
        return REPACK
    if any((root / images).is_dir() for images, _ in DISTRIBUTION_PARTS.values()):
        return DISTRIBUTION
    raise LayoutError(
        f"{root}: not an ILSVRC DET tree: expected ImageSets/DET/ (the repack) or "
        "ILSVRC2013_DET_val/, ILSVRC2014_DET_train/ (the 2014 distribution)"
    )


def find_devkit_lists(root: Path) -> Path | None:
    """The devkit's ``data/det_lists`` folder under ``root``, if any."""
    for name in DEVKIT_FOLDERS:
        if (lists := root / name / "data" / "det_lists").is_dir():
            return lists
    return None


@dataclass
class IlsvrcTree:
    """The folders of one ILSVRC DET tree.

    Attributes:
        root: the tree.
        layout: :data:`REPACK` or :data:`DISTRIBUTION`.
        devkit_lists: the devkit's ``data/det_lists`` (None when the tree has none).
    """

    root: Path
    layout: str
    devkit_lists: Path | None

    @classmethod
    def open(cls, root: str | Path) -> IlsvrcTree:
        root = Path(root)
        return cls(root, detect_layout(root), find_devkit_lists(root))

    def images(self, part: str) -> Path:
        """The image folder of ``val``, ``test`` or ``train``."""
        if self.layout == REPACK:
            return self.root / "Data" / "DET" / part
        return self.root / DISTRIBUTION_PARTS[part][0]

    def annotations(self, part: str) -> Path | None:
        """The XML folder of ``val``, ``test`` or ``train`` (None: the 2014 test has none)."""
        if self.layout == REPACK:
            return self.root / "Annotations" / "DET" / part
        xml = DISTRIBUTION_PARTS[part][1]
        return self.root / xml if xml else None

    def repack_list(self, name: str) -> Path | None:
        """``ImageSets/DET/<name>.txt`` on a repack that has it, else None."""
        path = self.root / "ImageSets" / "DET" / f"{name}.txt"
        return path if self.layout == REPACK and path.is_file() else None

    def image_list(self, part: str) -> Path:
        """The ``<name> <index>`` list of ``val`` or ``test``; LayoutError when missing."""
        path = self.repack_list(part)
        if path is None and self.devkit_lists is not None:
            path = self.devkit_lists / f"{part}.txt"
        if path is None or not path.is_file():
            raise LayoutError(f"{path or self._lists_hint(f'{part}.txt')}: {part} list not found")
        return path

    def train_list(self, kind: str, class_id: int) -> tuple[Path, list[str]]:
        """The images listed as ``pos`` (every instance of the class boxed) or ``part``
        (some unboxed) for class ``class_id``, and the list they come from.

        The repack's ``ImageSets/DET/train_<X>.txt`` (lines ``<id> 1``, ``<id> 0``) when
        present, else the devkit's ``train_<kind>_<X>.txt``; a missing train_part list is
        empty. LayoutError when the tree has neither list of positives.
        """
        path = self.repack_list(f"train_{class_id}")
        if path is not None:
            label = 1 if kind == "pos" else 0
            return path, [i for i, got in read_labelled_list(path) if got == label]
        if kind == "part" and not self._has_devkit_list(kind, class_id):
            return Path(), []
        if self.layout == REPACK and self.devkit_lists is None:
            raise LayoutError(
                f"{self.root / 'ImageSets' / 'DET' / f'train_{class_id}.txt'}: list of class "
                f"{class_id} not found (train_pos parts need it, or a devkit's "
                f"data/det_lists/train_pos_{class_id}.txt)"
            )
        return self.devkit_list(kind, class_id)

    def devkit_list(self, kind: str, class_id: int) -> tuple[Path, list[str]]:
        """The devkit's ``train_<kind>_<X>.txt`` and its ids; LayoutError when missing."""
        if self.devkit_lists is None:
            raise LayoutError(f"{self._lists_hint(f'train_{kind}_{class_id}.txt')}: not found")
        path = self.devkit_lists / f"train_{kind}_{class_id}.txt"
        if not path.is_file():
            raise LayoutError(f"{path}: train_{kind} list of class {class_id} not found")
        return path, read_id_list(path)

    def _has_devkit_list(self, kind: str, class_id: int) -> bool:
        lists = self.devkit_lists
        return lists is not None and (lists / f"train_{kind}_{class_id}.txt").is_file()

    def _lists_hint(self, name: str) -> str:
        if self.layout == REPACK:
            return str(self.root / "ImageSets" / "DET" / name)
        return str(self.root / DEVKIT_FOLDERS[0] / "data" / "det_lists" / name)


def read_id_list(path: Path) -> list[str]:
    """A devkit ``train_{pos,part,neg}_X.txt``: one image id per line (blank lines skipped)."""
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            raise LayoutError(f"{path}:{lineno}: expected '<image id>', got {short_repr(line)}")
        out.append(parts[0])
    return out


REPACK_LABELS = {"1": 1, "0": 0, "-1": -1}  # positive, partial positive, negative


def read_labelled_list(path: Path) -> list[tuple[str, int]]:
    """The repack's ``train_<X>.txt``: ``<image id> 1|0|-1`` per line."""
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in REPACK_LABELS:
            raise LayoutError(
                f"{path}:{lineno}: expected '<image id> 1|0|-1', got {short_repr(line)}"
            )
        out.append((parts[0], REPACK_LABELS[parts[1]]))
    return out
