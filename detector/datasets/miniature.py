"""A miniature ILSVRC 2014 DET tree in either layout, by the project's writer.

The same images in the 2014 distribution's layout (``ilsvrc2014``: devkit lists in
``ILSVRC2014_devkit/data/det_lists/``, ``ILSVRC2013_DET_val/`` + ``ILSVRC2013_DET_bbox_val/``,
``ILSVRC2013_DET_test/``, ``ILSVRC2014_DET_train/`` + ``ILSVRC2014_DET_bbox_train/``) or the
repack's (``repack``: ``Data/DET``, ``Annotations/DET``, ``ImageSets/DET`` with
``train_<X>.txt`` lines ``<id> 1|0|-1``), for tests and for trying the ILSVRC splits
(``python -m detector.train --dry-run``) without the 50 GB download. The lists have the
devkit's formats; the classes are the first three of the 200 ILSVRC classes (lists for
all 200 are written, most of them empty). What it holds (:data:`TRAIN`, :data:`VAL`):

- val: three images of R-CNN's val1 and three of val2 (real names), interleaved in val.txt;
- test: two images, no XML;
- train: 2013 images in synset folders (two boxes each for class 1), a 2014 addition
  (``ILSVRC2014_train_0000/ILSVRC2014_train_00000001``, classes 1 and 2), a train_part image
  of class 1, an extra negative without XML (``ILSVRC2013_train_00000001``), and a
  train_pos line of class 3 whose image is not there. Some devkit lines omit the folder.

Images are small seeded JPEGs; everything is deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from detector.core.structures import ClassList
from detector.datasets.classes import MAX_DET_ID, default_classes
from detector.datasets.demo import JPEG_QUALITY, xml_text

SIZE = (64, 48)  # width, height of every image
DEVKIT_LISTS = Path("ILSVRC2014_devkit") / "data" / "det_lists"
VAL1 = ["ILSVRC2012_val_00010706", "ILSVRC2013_val_00002464", "ILSVRC2012_val_00004246"]
VAL2 = ["ILSVRC2012_val_00032300", "ILSVRC2012_val_00001007", "ILSVRC2013_val_00000910"]
VAL = [name for pair in zip(VAL1, VAL2, strict=True) for name in pair]  # val.txt order
VAL_LABELS = {name: [1 + i % 3] for i, name in enumerate(VAL)}  # one box per val image
TEST = ["ILSVRC2012_test_00000003", "ILSVRC2012_test_00000004"]


def _wnid(class_id: int) -> str:
    return default_classes().wnids[class_id - 1]


A, B, C = (_wnid(i) for i in (1, 2, 3))
ADDITION = "ILSVRC2014_train_0000/ILSVRC2014_train_00000001"
NEGATIVE = "ILSVRC2013_DET_train_extra0/ILSVRC2013_train_00000001"
# Train images: id (relative path, no extension) -> labels of its boxes; None = no XML.
TRAIN: dict[str, list[int] | None] = {
    ADDITION: [1, 2],
    **{f"{A}/{A}_{k}": [1, 1] for k in (1, 2, 3, 4)},
    f"{A}/{A}_5": [1],  # train_part of class 1: another accordion is unboxed
    f"{B}/{B}_1": [2],
    f"{B}/{B}_2": [2],
    f"{C}/{C}_1": [3, 3, 3],
    NEGATIVE: None,
}
MISSING_IMAGE = f"{C}/{C}_9"  # listed train_pos for class 3, no file
# Devkit lists per class, as their lines read (some without the folder).
POS = {
    1: [ADDITION, f"{A}/{A}_1", f"{A}/{A}_2", f"{A}_3", f"{A}/{A}_4"],
    2: [ADDITION, f"{B}/{B}_1", f"{B}_2"],
    3: [f"{C}/{C}_1", MISSING_IMAGE],
}
PART = {1: [f"{A}/{A}_5"]}
NEG = {1: ["ILSVRC2013_train_00000001", f"{B}/{B}_1"], 2: [f"{C}/{C}_1"]}
LAYOUTS = ("ilsvrc2014", "repack")


def write_miniature_tree(root: str | Path, layout: str = "ilsvrc2014", seed: int = 0) -> Path:
    """Write the miniature tree into ``root`` in ``layout``; returns ``root``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = _folders(layout)
    for name in VAL:
        _image(root / folders["val"][0], name, rng)
        _xml(root / folders["val"][1], name, VAL_LABELS[name])
    for name in TEST:
        _image(root / folders["test"][0], name, rng)
    for image_id, labels in TRAIN.items():
        train_id = _repack_id(image_id) if layout == "repack" else image_id
        _image(root / folders["train"][0], train_id, rng)
        if labels is not None:
            _xml(root / folders["train"][1], train_id, labels)
    lists = root / ("ImageSets/DET" if layout == "repack" else DEVKIT_LISTS)
    _write_lists(lists, layout)
    if layout == "ilsvrc2014":
        write_meta_det(lists.parent / "meta_det.mat", default_classes())
    return root


def write_meta_det(path: Path, classes: ClassList) -> Path:
    """A devkit-style ``meta_det.mat``: ``synsets`` with ``ILSVRC2014_DET_ID``, ``WNID``,
    ``name``, ``description``, one per class, then one hierarchy node (DET id above 200)."""
    from scipy.io import savemat

    fields = [(f, object) for f in ("ILSVRC2014_DET_ID", "WNID", "name", "description")]
    rows = [
        (i, w, n, n) for i, (w, n) in enumerate(zip(classes.wnids, classes.names, strict=True), 1)
    ]
    rows.append((MAX_DET_ID + 1, "n00001740", "entity", "a hierarchy node, not a class"))
    synsets = np.array([tuple(np.array(v) for v in row) for row in rows], dtype=fields)
    savemat(str(path), {"synsets": synsets.reshape(1, -1)})
    return path


def _folders(layout: str) -> dict[str, tuple[str, str]]:
    if layout == "repack":
        return {p: (f"Data/DET/{p}", f"Annotations/DET/{p}") for p in ("val", "test", "train")}
    return {
        "val": ("ILSVRC2013_DET_val", "ILSVRC2013_DET_bbox_val"),
        "test": ("ILSVRC2013_DET_test", ""),
        "train": ("ILSVRC2014_DET_train", "ILSVRC2014_DET_bbox_train"),
    }


def _repack_id(image_id: str) -> str:
    """The repack keeps the 2013 synset folders under ``ILSVRC2013_train/``."""
    return image_id if image_id.startswith("ILSVRC") else f"ILSVRC2013_train/{image_id}"


def _image(folder: Path, image_id: str, rng: np.random.Generator) -> None:
    path = folder / f"{image_id}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)


def _xml(folder: Path, image_id: str, labels: list[int]) -> None:
    """One box per label, side by side: ``[4 + 12 k, 4, 14 + 12 k, 40)``."""
    boxes = np.array([[4 + 12 * k, 4, 14 + 12 * k, 40] for k in range(len(labels))])
    path = folder / f"{image_id}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = image_id.rpartition("/")[2]
    path.write_text(xml_text(folder.name, name, *SIZE, boxes, [_wnid(c) for c in labels]))


def _write_lists(lists: Path, layout: str) -> None:
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "val.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(VAL, 1)))
    (lists / "test.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(TEST, 1)))
    for c in range(1, len(default_classes()) + 1):
        if layout == "repack":
            lines = [f"{_full_repack(i)} 1" for i in POS.get(c, [])]
            lines += [f"{_full_repack(i)} 0" for i in PART.get(c, [])]
            lines += [f"{_full_repack(i)} -1" for i in NEG.get(c, [])]
            (lists / f"train_{c}.txt").write_text("".join(f"{line}\n" for line in lines))
            continue
        for kind, table in (("pos", POS), ("part", PART), ("neg", NEG)):
            text = "".join(f"{i}\n" for i in table.get(c, []))
            (lists / f"train_{kind}_{c}.txt").write_text(text)


def _full_repack(line: str) -> str:
    """A devkit list line as the repack writes it: always with its folders."""
    matches = [i for i in [*TRAIN, MISSING_IMAGE] if i == line or i.endswith(f"/{line}")]
    return _repack_id(matches[0])


__all__ = ["LAYOUTS", "write_meta_det", "write_miniature_tree"]
