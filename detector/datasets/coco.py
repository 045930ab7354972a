"""COCO instances JSON (read with pycocotools), yielding :class:`ImageRecord`.

Class ids are remapped to 1..K in ascending COCO category id (80 classes for COCO 2017), or
to the ids of a given :class:`ClassList` matched by category name. COCO's ``[x, y, w, h]``
is continuous pixels, so the internal box is ``(x, y, x + w, y + h)``. Crowd annotations
(``iscrowd = 1``) are no objects: they go to ``ImageRecord.ignore_boxes``, so training
takes neither positives nor background from them (``detector.training.sampling``); the
devkit-style evaluation never sees them. Images come in ascending image id; ``ImageRecord.index`` is
the 1-based position in that order, ``image_id`` the file name without its extension.

    ds = CocoDataset("annotations/instances_val2017.json", "val2017")
    print(len(ds), ds.classes.names[:3])
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from detector.core.structures import ClassList, ImageRecord
from detector.datasets.ilsvrc import AnnotationError


class CocoDataset:
    """One COCO annotation file. Iterating yields :class:`ImageRecord` in image-id order.

    Args:
        annotation_json: the instances file.
        image_dir: folder holding the images named by ``file_name``.
        classes: match categories by name to these ids; default all categories, by id.
    Raises:
        AnnotationError naming the file (and the annotation id) for a malformed file.
    """

    def __init__(
        self, annotation_json: str | Path, image_dir: str | Path, classes: ClassList | None = None
    ) -> None:
        self.path = Path(annotation_json)
        self.image_dir = Path(image_dir)
        self.coco = _load(self.path)
        self.classes, self.class_of_category = self._classes(classes)
        self.image_ids = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self) -> Iterator[ImageRecord]:
        for index, coco_id in enumerate(self.image_ids, 1):
            yield self.record(coco_id, index)

    def record(self, coco_id: int, index: int) -> ImageRecord:
        """The annotations of one COCO image id, crowd boxes apart."""
        info = self.coco.imgs[coco_id]
        file_name = str(info.get("file_name", coco_id))
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns.get(coco_id, []):
            if ann.get("iscrowd", 0):
                crowd.append(self._box(ann))
                continue
            boxes.append(self._box(ann))
            labels.append(self._label(ann))
        image = self.image_dir / file_name
        return ImageRecord(
            image_id=Path(file_name).stem,
            index=index,
            path=image if image.is_file() else None,
            width=int(info.get("width", 0)),
            height=int(info.get("height", 0)),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64),
            ignore_boxes=np.array(crowd, dtype=np.float32).reshape(-1, 4),
        )

    def _classes(self, classes: ClassList | None) -> tuple[ClassList, dict[int, int]]:
        cats = [self.coco.cats[c] for c in sorted(self.coco.cats)]
        names = [str(c.get("name", c["id"])) for c in cats]
        if classes is None:
            try:
                classes = ClassList(wnids=list(names), names=list(names))
            except ValueError as e:
                raise AnnotationError(f"{self.path}: categories: {e}") from None
            return classes, {c["id"]: i + 1 for i, c in enumerate(cats)}
        try:
            return classes, {c["id"]: classes.id_of(n) for c, n in zip(cats, names, strict=True)}
        except KeyError as e:
            raise AnnotationError(
                f"{self.path}: categories: {e.args[0]} not in the class list"
            ) from None

    def _box(self, ann: dict) -> list[float]:
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise AnnotationError(
                f"{self.path}: annotation {ann.get('id')}: bad bbox {bbox!r}"
            ) from None
        if not (np.isfinite([x, y, w, h]).all() and w >= 0 and h >= 0):
            raise AnnotationError(f"{self.path}: annotation {ann.get('id')}: bad bbox {bbox!r}")
        return [x, y, x + w, y + h]

    def _label(self, ann: dict) -> int:
        try:
            return self.class_of_category[ann["category_id"]]
        except KeyError:
            raise AnnotationError(
                f"{self.path}: annotation {ann.get('id')}: unknown category_id {ann.get('category_id')!r}"
            ) from None


def coco_document(records: list[ImageRecord], classes: ClassList, root: Path) -> dict:
    """A COCO instances document of ``records`` (the writer of this module's reader).

    ``file_name`` is each image's path relative to ``root`` (the folder to give as
    ``data.root``; ``..`` for an image outside it), category ids are the class ids 1..K, ``image_id`` the record's index;
    ``ignore_boxes`` become crowd annotations. Records without an image file are left out.
    """
    images, annotations = [], []
    for rec in records:
        if rec.path is None:
            continue
        images.append(
            {
                "id": rec.index,
                "file_name": Path(os.path.relpath(rec.path, root)).as_posix(),
                "width": rec.width,
                "height": rec.height,
            }
        )
        objects = [(b, int(c), 0) for b, c in zip(rec.boxes, rec.labels, strict=True)]
        objects += [(b, 0, 1) for b in rec.ignore_boxes]
        for box, label, crowd in objects:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rec.index,
                    "category_id": label or 1,  # a crowd box's class does not matter here
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
    categories = [
        {"id": i, "name": name, "supercategory": wnid}
        for i, (wnid, name) in enumerate(zip(classes.wnids, classes.names, strict=True), 1)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _load(path: Path):
    """pycocotools ``COCO`` with its prints silenced and its failures named after the file."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise AnnotationError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except Exception as e:  # JSONDecodeError, KeyError/TypeError on a missing section
        raise AnnotationError(
            f"{path}: not a COCO instances file ({type(e).__name__}: {e})"
        ) from None
