"""The demo generator: ILSVRC layout read back by IlsvrcDet, exact boxes, determinism, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.datasets import demo
from detector.datasets.ilsvrc import IlsvrcDet

NUM_TRAIN, NUM_VAL, SEED = 14, 12, 3  # both splits hold image 10: the empty one


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "tree"
    return demo.ensure_demo_dataset(out, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED)


def test_layout_is_the_ilsvrc_det_layout(root: Path) -> None:
    assert (root / "map_det.txt").read_text().splitlines()[:2] == [
        "d0000001 1 cat",
        "d0000002 2 coffee cup",
    ]
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        lines = (root / "ImageSets" / "DET" / f"{split}.txt").read_text().splitlines()
        assert lines[0] == f"demo_{split}_00000001 1"
        assert len(lines) == n
        assert len(list((root / "Data" / "DET" / split).glob("*.JPEG"))) == n
        assert len(list((root / "Annotations" / "DET" / split).glob("*.xml"))) == n


def test_bndbox_children_in_devkit_order(root: Path) -> None:
    text = (root / "Annotations" / "DET" / "val" / "demo_val_00000001.xml").read_text()
    tags = [t for t in ("<xmin>", "<xmax>", "<ymin>", "<ymax>") if t in text]
    assert tags == ["<xmin>", "<xmax>", "<ymin>", "<ymax>"]
    assert [text.index(t) for t in tags] == sorted(text.index(t) for t in tags)
    assert "<width>" in text and "<height>" in text


def test_ilsvrc_reader_reads_it_with_boxes_inside_the_images(root: Path) -> None:
    for split in ("train", "val"):
        ds = IlsvrcDet(root, split)
        assert ds.classes.names == demo.DEMO_CLASSES.names  # found <root>/map_det.txt
        for rec in ds:
            w, h = Image.open(rec.path).size
            assert (rec.width, rec.height) == (w, h)
            assert max(w, h) in range(demo.LONG_SIDE[0], demo.LONG_SIDE[1] + 1)
            assert len(rec.boxes) <= demo.MAX_OBJECTS
            b = rec.boxes
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
            assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert (b[:, 2:] - b[:, :2] >= demo.MIN_BOX_SIDE).all()


def test_boxes_are_the_extent_of_the_visible_object_pixels(root: Path) -> None:
    for rec in IlsvrcDet(root, "val"):
        sample = demo.render_sample(SEED, "val", rec.index - 1)
        np.testing.assert_array_equal(rec.boxes, sample.boxes)
        np.testing.assert_array_equal(rec.labels, sample.labels)
        for box, mask in zip(sample.boxes.astype(int), sample.masks, strict=True):
            x1, y1, x2, y2 = box
            assert mask[y1:y2, x1:x2].sum() == mask.sum()  # every visible pixel is inside
            assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()  # and the box is tight
            assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
        assert not (sample.masks.sum(axis=0) > 1).any()  # a pixel shows one object at most
        decoded = np.asarray(Image.open(rec.path).convert("RGB"), np.float32)
        assert np.abs(decoded - sample.image).mean() < 8  # the JPEG is that image (q90, 4:2:0)


def test_empty_images_have_no_object_elements(root: Path) -> None:
    for split in ("train", "val"):
        records = list(IlsvrcDet(root, split))
        empty = [r for r in records if len(r.boxes) == 0]
        assert [r.index - 1 for r in empty] == [demo.EMPTY_AT]
        xml = root / "Annotations" / "DET" / split / f"{empty[0].image_id}.xml"
        assert "<object>" not in xml.read_text()


def test_every_class_appears_in_both_splits(root: Path) -> None:
    for split in ("train", "val"):
        seen = {int(label) for rec in IlsvrcDet(root, split) for label in rec.labels}
        assert seen == set(range(1, len(demo.DEMO_CLASSES) + 1))


def test_generation_is_deterministic(root: Path, tmp_path: Path) -> None:
    again = demo.ensure_demo_dataset(
        tmp_path / "again", num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED
    )
    assert _files(again) == _files(root)
    other = demo.render_sample(SEED + 1, "val", 0).image
    assert other.shape != demo.render_sample(SEED, "val", 0).image.shape or not np.array_equal(
        other, demo.render_sample(SEED, "val", 0).image
    )


def test_second_call_does_not_regenerate(tmp_path: Path) -> None:
    root = demo.ensure_demo_dataset(tmp_path / "d", num_train=2, num_val=1, seed=0)
    marker = root / demo.MARKER
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert demo.ensure_demo_dataset(tmp_path / "d", num_train=2, num_val=1, seed=0) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert json.loads(marker.read_text())["num_train"] == 2
    # Other settings replace the tree; no temporary or old folders are left behind.
    demo.ensure_demo_dataset(tmp_path / "d", num_train=3, num_val=1, seed=0)
    assert len(IlsvrcDet(root, "train")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        demo.ensure_demo_dataset(tmp_path / "mine", num_train=1, num_val=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match=">= 0"):
        demo.ensure_demo_dataset(tmp_path / "neg", num_train=-1, num_val=1)


def test_empty_splits(tmp_path: Path) -> None:
    root = demo.ensure_demo_dataset(tmp_path / "empty", num_train=0, num_val=0)
    assert len(IlsvrcDet(root, "train")) == 0 and list(IlsvrcDet(root, "val")) == []


def test_default_location_follows_the_cache_env_var_and_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "cache"))
    root = demo.ensure_demo_dataset(None, num_train=1, num_val=1)
    assert root == tmp_path / "cache" / "demo" / f"v{demo.GENERATOR_VERSION}"
    assert (root / demo.MARKER).exists()
    # data.demo_dir moves it; the resolve step reads the config (it also builds 240 + 40)
    folder = tmp_path / "from_cfg"
    assert demo.ensure_demo_dataset(folder, num_train=1, num_val=1) == folder


def test_cli_writes_dataset_and_previews(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--out", str(tmp_path / "cli"), "--train", "2", "--val", "2"]
    assert demo.main([*args, "--preview", str(tmp_path / "prev"), "--preview-count", "1"]) == 0
    assert str(tmp_path / "cli") in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "prev").iterdir()] == ["demo_val_00000001.png"]
    (tmp_path / "file").write_text("x")
    assert demo.main(["--out", str(tmp_path / "file"), "--train", "1", "--val", "1"]) == 1
    assert "file: exists and is not a folder" in capsys.readouterr().err
