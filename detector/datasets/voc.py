"""PASCAL VOC on disk (``VOCdevkit/VOC2007``): ``JPEGImages/<id>.jpg``,
``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``.

VOC boxes are 1-based inclusive pixels: ``xmin = 1`` is the first column. In the internal
continuous frame that is ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``.
Objects flagged ``<difficult>1`` are left out by default: ``ImageRecord`` has no flag for
them and the ILSVRC protocol has none, so keeping them would count them as positives
(VOC's own evaluation ignores them instead). ``use_difficult=True`` keeps them.

    for rec in VocDataset("VOCdevkit/VOC2007", "test"):
        print(rec.image_id, rec.boxes, rec.labels)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.core.structures import ClassList, ImageRecord
from detector.datasets.ilsvrc import AnnotationError, finite_number, pixel_count, read_xml

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def voc_classes() -> ClassList:
    """The 20 VOC classes (ids 1..20 in the devkit's alphabetical order); wnid = name."""
    return ClassList(wnids=list(VOC_CLASSES), names=list(VOC_CLASSES))


def parse_voc_annotation(
    path: str | Path, classes: ClassList, use_difficult: bool = False
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """One VOC XML file -> width, height, boxes (float32[N, 4], internal xyxy), labels (int64[N]).

    Raises:
        AnnotationError naming the file, the object and the field.
    """
    path = Path(path)
    root = read_xml(path)
    width, height = (_size(root, f"size/{t}", path) for t in ("width", "height"))
    boxes, labels = [], []
    for i, obj in enumerate(root.iter("object")):
        where = f"object {i}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{path}: {where}: missing <name>")
        if not use_difficult and _number(obj, "difficult", path, where, default=0) != 0:
            continue
        try:
            labels.append(classes.id_of(name))
        except KeyError:
            raise AnnotationError(f"{path}: {where}: unknown class {name!r}") from None
        if obj.find("bndbox") is None:
            raise AnnotationError(f"{path}: {where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(obj, f"bndbox/{t}", path, where) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise AnnotationError(f"{path}: {where}: <bndbox> has xmax < xmin or ymax < ymin")
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
    return (
        width,
        height,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
    )


def _number(node, tag: str, path: Path, where: str, default: float | None = None) -> float:
    text = node.findtext(tag)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise AnnotationError(f"{path}: {where}: missing <{tag}>")
    return finite_number(text, tag, path, where)


def _size(root, tag: str, path: Path) -> int:
    text = root.findtext(tag)
    if text is None or not text.strip():
        return 0
    return pixel_count(finite_number(text, tag, path, "image"), tag, path, text, "image")


@dataclass
class VocDataset:
    """One split of a VOC year folder. Iterating yields :class:`ImageRecord` in list order.

    Args:
        root: the folder holding ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/``.
        split: ``ImageSets/Main/<split>.txt`` (one image id per line).
        classes: default the 20 VOC classes.
        use_difficult: keep objects flagged difficult (default: left out, see module doc).
    """

    root: Path
    split: str
    classes: ClassList | None = None
    use_difficult: bool = False

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.classes is None:
            self.classes = voc_classes()
        list_path = self.root / "ImageSets" / "Main" / f"{self.split}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"{list_path}: split list not found")
        self.ids = [ln.split()[0] for ln in list_path.read_text().splitlines() if ln.strip()]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[ImageRecord]:
        for index, image_id in enumerate(self.ids, 1):
            yield self.record(image_id, index)

    def record(self, image_id: str, index: int) -> ImageRecord:
        """Annotations of one image; the XML file must exist."""
        xml = self.root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise AnnotationError(f"{xml}: annotation file not found")
        width, height, boxes, labels = parse_voc_annotation(xml, self.classes, self.use_difficult)
        image = self.root / "JPEGImages" / f"{image_id}.jpg"
        path = image if image.is_file() else None
        return ImageRecord(image_id, index, path, width, height, boxes, labels)
