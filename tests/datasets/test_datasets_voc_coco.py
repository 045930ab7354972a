"""VOC and COCO readers on tiny files written to tmp_path."""

from __future__ import annotations

import json

import pytest

from detector.core.structures import ClassList
from detector.datasets.coco import CocoDataset
from detector.datasets.ilsvrc import AnnotationError
from detector.datasets.voc import VocDataset, voc_classes

# ---- VOC ------------------------------------------------------------------------------------


def voc_object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    size = "<size><width>353</width><height>500</height><depth>3</depth></size>"
    objects = voc_object("dog", (48, 240, 195, 371)) + voc_object("person", (8, 12, 352, 498), 1)
    (root / "Annotations" / "000001.xml").write_text(f"<annotation>{size}{objects}</annotation>")
    (root / "Annotations" / "000002.xml").write_text(f"<annotation>{size}</annotation>")
    (root / "JPEGImages" / "000001.jpg").write_bytes(b"")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    return root


def test_voc_boxes_go_from_one_based_inclusive_to_internal(voc):
    records = list(VocDataset(voc, "test"))
    assert [(r.image_id, r.index) for r in records] == [("000001", 1), ("000002", 2)]
    first = records[0]
    assert (first.width, first.height) == (353, 500)
    assert first.boxes.tolist() == [[47, 239, 195, 371]]  # x1 = xmin - 1, x2 = xmax
    assert first.labels.tolist() == [voc_classes().id_of("dog")] == [12]
    assert first.path == voc / "JPEGImages" / "000001.jpg"
    assert len(records[1].labels) == 0 and records[1].path is None


def test_voc_difficult_objects_optional(voc):
    (rec, _) = list(VocDataset(voc, "test", use_difficult=True))
    assert rec.labels.tolist() == [12, 15]
    assert rec.boxes[1].tolist() == [7, 11, 352, 498]


def test_voc_classes():
    c = voc_classes()
    assert len(c) == 20 and c.wnids[0] == "aeroplane" and c.id_of("tvmonitor") == 20


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<annotation>", "not a readable XML annotation"),
        (
            "<annotation><object><name>unicorn</name></object></annotation>",
            "object 0: unknown class 'unicorn'",
        ),
        (
            "<annotation><object><name>dog</name></object></annotation>",
            "object 0: missing <bndbox>",
        ),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>x</xmax><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <bndbox/xmax> is not a number",
        ),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>4</xmax></bndbox></object></annotation>",
            "object 0: missing <bndbox/ymax>",
        ),
        (
            "<annotation><size><width>1e400</width></size></annotation>",
            "<size/width> is not a finite number",
        ),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>nan</ymin>"
            "<xmax>4</xmax><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <bndbox/ymin> is not a finite number",
        ),
        (
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>Infinity</xmax><ymax>3</ymax></bndbox></object></annotation>",
            "object 0: <bndbox/xmax> is not a finite number",
        ),
    ],
)
def test_voc_malformed_names_file_and_field(voc, body, problem):
    (voc / "Annotations" / "000002.xml").write_text(body)
    with pytest.raises(AnnotationError) as err:
        list(VocDataset(voc, "test"))
    assert str(err.value).startswith(str(voc / "Annotations" / "000002.xml")) and problem in str(
        err.value
    )


def test_voc_missing_files(voc):
    (voc / "Annotations" / "000002.xml").unlink()
    with pytest.raises(AnnotationError, match="000002.xml: annotation file not found"):
        list(VocDataset(voc, "test"))
    with pytest.raises(FileNotFoundError, match="split list not found"):
        VocDataset(voc, "train")


# ---- COCO -----------------------------------------------------------------------------------


def coco_json(tmp_path, annotations=None, categories=None):
    data = {
        "images": [
            {"id": 42, "file_name": "b.jpg", "width": 640, "height": 480},
            {"id": 7, "file_name": "a.jpg", "width": 320, "height": 240},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 18,
                "bbox": [10.5, 20, 30, 40],
                "iscrowd": 0,
                "area": 1200,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "bbox": [0, 0, 5, 5],
                "iscrowd": 1,
                "area": 25,
            },
            {
                "id": 3,
                "image_id": 42,
                "category_id": 1,
                "bbox": [1, 2, 3, 4],
                "iscrowd": 0,
                "area": 12,
            },
        ],
        "categories": categories
        if categories is not None
        else [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_records(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    ds = CocoDataset(coco_json(tmp_path), tmp_path)
    assert ds.classes.names == ["person", "dog"]  # ascending category id: 1, 18
    records = list(ds)
    assert [(r.image_id, r.index) for r in records] == [("a", 1), ("b", 2)]  # image id 7, 42
    a, b = records
    assert a.boxes.tolist() == [[10.5, 20, 40.5, 60]]  # the crowd box is no object...
    assert a.ignore_boxes.tolist() == [[0, 0, 5, 5]]  # ...but a region training leaves out
    assert b.ignore_boxes.shape == (0, 4) and a.exhaustive
    assert a.labels.tolist() == [2]
    assert (a.width, a.height, a.path) == (320, 240, tmp_path / "a.jpg")
    assert b.boxes.tolist() == [[1, 2, 4, 6]] and b.labels.tolist() == [1] and b.path is None


def test_coco_with_class_list(tmp_path):
    classes = ClassList(wnids=["dog", "cat", "person"], names=["dog", "cat", "person"])
    (a, b) = list(CocoDataset(coco_json(tmp_path), tmp_path, classes))
    assert a.labels.tolist() == [1] and b.labels.tolist() == [3]
    with pytest.raises(AnnotationError, match="categories: unknown class 'person'"):
        CocoDataset(coco_json(tmp_path), tmp_path, ClassList(["dog"], ["dog"]))


def test_coco_without_annotations(tmp_path):
    records = list(CocoDataset(coco_json(tmp_path, annotations=[]), tmp_path))
    assert [len(r.labels) for r in records] == [0, 0]


@pytest.mark.parametrize(
    ("annotations", "problem"),
    [
        (
            [{"id": 5, "image_id": 7, "category_id": 1, "bbox": [0, 0, -1, 3]}],
            "annotation 5: bad bbox",
        ),
        ([{"id": 6, "image_id": 7, "category_id": 1, "bbox": "box"}], "annotation 6: bad bbox"),
        (
            [{"id": 8, "image_id": 7, "category_id": 99, "bbox": [0, 0, 1, 1]}],
            "annotation 8: unknown category_id 99",
        ),
    ],
)
def test_coco_malformed_annotation(tmp_path, annotations, problem):
    path = coco_json(tmp_path, annotations=annotations)
    with pytest.raises(AnnotationError) as err:
        list(CocoDataset(path, tmp_path))
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_coco_unreadable_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not a COCO instances file"):
        CocoDataset(path, tmp_path)
    with pytest.raises(AnnotationError, match="not found"):
        CocoDataset(tmp_path / "none.json", tmp_path)
