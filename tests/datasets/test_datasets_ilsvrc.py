"""The ILSVRC reader on the 20 real devkit annotation files in tests/data, and malformed input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.core.structures import to_inclusive
from detector.datasets.classes import DATA_DIR, default_classes
from detector.datasets.ilsvrc import (
    AnnotationError,
    IlsvrcDet,
    blacklist_for_split,
    parse_annotation,
    read_blacklist,
    read_image_set,
)

REAL = Path(__file__).resolve().parent.parent / "data" / "ilsvrc_annotations"


@pytest.fixture(scope="module")
def classes():
    return default_classes()


def test_real_file_values_exactly(classes):
    # <bndbox> order in the file: xmin 105, xmax 358, ymin 204, ymax 279
    w, h, boxes, labels = parse_annotation(REAL / "ILSVRC2012_val_00000006.xml", classes)
    assert (w, h) == (500, 368)
    assert labels.tolist() == [classes.id_of("n01726692")] == [159]
    assert to_inclusive(boxes).tolist() == [[105, 204, 358, 279]]
    assert boxes.tolist() == [[105, 204, 359, 280]]  # internal: x2 = xmax + 1


def test_real_file_without_objects(classes):
    w, h, boxes, labels = parse_annotation(REAL / "ILSVRC2012_val_00013230.xml", classes)
    assert (w, h) == (500, 444)
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32 and labels.shape == (0,)


def test_all_real_files_parse(classes):
    files = sorted(REAL.glob("*.xml"))
    assert len(files) == 20
    total = 0
    for f in files:
        w, h, boxes, labels = parse_annotation(f, classes)
        assert w > 0 and h > 0
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((labels >= 1) & (labels <= 200)).all()
        total += len(labels)
    assert total == sum(f.read_text().count("<object>") for f in files) == 69


def test_dataset_over_a_tree(tmp_path, classes):
    ann = tmp_path / "Annotations" / "DET" / "val"
    ann.mkdir(parents=True)
    (tmp_path / "ImageSets" / "DET").mkdir(parents=True)
    names = ["ILSVRC2012_val_00000006", "ILSVRC2012_val_00013230"]
    for n in names:
        shutil.copy(REAL / f"{n}.xml", ann)
    (tmp_path / "ImageSets" / "DET" / "val.txt").write_text(f"{names[0]} 7\n{names[1]} 9\n")
    img = tmp_path / "Data" / "DET" / "val"
    img.mkdir(parents=True)
    (img / f"{names[0]}.JPEG").write_bytes(b"")
    records = list(IlsvrcDet(tmp_path, "val"))
    assert [(r.image_id, r.index) for r in records] == [(names[0], 7), (names[1], 9)]
    assert records[0].path == img / f"{names[0]}.JPEG" and records[1].path is None
    assert len(records[0].labels) == 1 and len(records[1].labels) == 0


def test_missing_split_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="split list not found"):
        IlsvrcDet(tmp_path, "val")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<annotation><object>", "not a readable XML annotation"),
        ("<annotation><object><bndbox/></object></annotation>", "object 0: missing <name>"),
        ("<annotation><object><name>nXX</name></object></annotation>", "unknown class 'nXX'"),
        ("<annotation><object><name>n01726692</name></object></annotation>", "missing <bndbox>"),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>1</xmin><xmax>5</xmax>"
            "<ymin>1</ymin></bndbox></object></annotation>",
            "missing <bndbox>/<ymax>",
        ),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>a</xmin><xmax>5</xmax>"
            "<ymin>1</ymin><ymax>3</ymax></bndbox></object></annotation>",
            "<xmin> is not a number",
        ),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>9</xmin><xmax>5</xmax>"
            "<ymin>1</ymin><ymax>3</ymax></bndbox></object></annotation>",
            "xmax < xmin",
        ),
        (
            "<annotation><size><width>wide</width></size></annotation>",
            "<size/width> is not a number",
        ),
        (
            "<annotation><size><width>1e400</width></size></annotation>",
            "<size/width> is not a finite number",
        ),
        (
            "<annotation><size><height>-3</height></size></annotation>",
            "<size/height> must be a pixel count",
        ),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>nan</xmin><xmax>5</xmax>"
            "<ymin>1</ymin><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <xmin> is not a finite number",
        ),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>1</xmin><xmax>inf</xmax>"
            "<ymin>1</ymin><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <xmax> is not a finite number",
        ),
        (
            "<annotation><object><name>n01726692</name><bndbox><xmin>1</xmin><xmax>5</xmax>"
            "<ymin>-1e400</ymin><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <ymin> is not a finite number",
        ),
    ],
)
def test_malformed_xml_names_file_and_field(tmp_path, classes, body, problem):
    path = tmp_path / "bad.xml"
    path.write_text(body)
    with pytest.raises(AnnotationError) as err:
        parse_annotation(path, classes)
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_entity_expansion_refused(tmp_path, classes):
    path = tmp_path / "bomb.xml"
    path.write_text('<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><annotation>&x;</annotation>')
    with pytest.raises(AnnotationError, match="not a readable XML annotation"):
        parse_annotation(path, classes)


def test_shipped_blacklist(classes):
    pairs = read_blacklist(DATA_DIR / "ilsvrc2014_det_val_blacklist.txt", classes)
    assert len(pairs) == 409
    assert (46, classes.id_of("n00007846")) in pairs
    assert (85, classes.id_of("n07753275")) in pairs


def test_blacklist_errors(tmp_path, classes):
    path = tmp_path / "bl.txt"
    path.write_text("1 n00007846\nx n00007846\n")
    with pytest.raises(ValueError, match=r"bl.txt:2: expected"):
        read_blacklist(path, classes)
    path.write_text("\n3 nXX\n")
    with pytest.raises(ValueError, match=r"bl.txt:2: unknown class 'nXX'"):
        read_blacklist(path, classes)


def test_image_set_lines(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("a 3\n\nb\n")
    assert read_image_set(path) == [("a", 3), ("b", 2)]
    path.write_text("a 3\nb c\n")
    with pytest.raises(ValueError, match=r"val.txt:2: expected"):
        read_image_set(path)


def _lists(root: Path, val: str | None, **others: str) -> None:
    sets = root / "ImageSets" / "DET"
    sets.mkdir(parents=True, exist_ok=True)
    if val is not None:
        (sets / "val.txt").write_text(val)
    for name, text in others.items():
        (sets / f"{name}.txt").write_text(text)


def test_blacklist_on_val_applies_val_indices(tmp_path, classes):
    _lists(tmp_path, "a 1\nb 2\nc 3\n")
    bl = tmp_path / "bl.txt"
    bl.write_text("2 n00007846\n9 n00007846\n")
    found = blacklist_for_split(bl, classes, tmp_path, "val")
    assert found.pairs == {(2, classes.id_of("n00007846"))}
    assert (found.in_file, found.outside, found.mapped_through) == (2, 1, None)


def test_blacklist_on_another_list_is_mapped_through_val_names(tmp_path, classes):
    """R-CNN's val2 numbers its images 1, 2, ... in its own order: the blacklist's val.txt
    index 2 (image b) is val2's image 1, never val2's line 2 (image d)."""
    _lists(tmp_path, "a 1\nb 2\nc 3\nd 4\ne 5\n", val2="b 1\nd 2\n")
    bl = tmp_path / "bl.txt"
    person, fig = classes.id_of("n00007846"), classes.id_of("n07753275")
    bl.write_text(f"2 n00007846\n4 {fig}\n5 n00007846\n")
    found = blacklist_for_split(bl, classes, tmp_path, "val2")
    assert found.pairs == {(1, person), (2, fig)}
    assert found.in_file == 3 and found.outside == 1
    assert found.mapped_through == tmp_path / "ImageSets" / "DET" / "val.txt"


def test_blacklist_on_another_list_without_val_txt_is_refused(tmp_path, classes):
    _lists(tmp_path, None, val2="b 1\nd 2\n")
    bl = tmp_path / "bl.txt"
    bl.write_text("2 n00007846\n")
    with pytest.raises(ValueError) as err:
        blacklist_for_split(bl, classes, tmp_path, "val2")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bl}: ")
    assert "val.txt indices" in msg and "val2" in msg and "data.blacklist=none" in msg
