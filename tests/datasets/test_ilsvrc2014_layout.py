"""ILSVRC DET in both layouts, on miniature trees by the project's writer
(``detector.datasets.miniature``), seen through the trainers' ``--dry-run``: layout
detection, ids without folders, R-CNN's val halves with their val.txt indices, train_pos_N
capping, compositions, ``source`` / ``complete_for``, and errors naming a missing XML."""

from __future__ import annotations

import json
import os

import pytest

from detector.core.config import DataConfig
from detector.datasets import read_split, split_blacklist
from detector.datasets.classes import default_classes
from detector.datasets.image_index import index_file, load_index
from detector.datasets.miniature import (
    ADDITION,
    MISSING_IMAGE,
    NEGATIVE,
    VAL,
    VAL1,
    VAL2,
    write_miniature_tree,
)
from detector.train import main as train_main
from proposals.multibox.__main__ import main as multibox_main

A, B, C = default_classes().wnids[:3]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTION_RCNN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=["ilsvrc2014", "repack"])
def tree(request, tmp_path_factory):
    return write_miniature_tree(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return write_miniature_tree(tmp_path_factory.mktemp("dist"), "ilsvrc2014")


def dry_run(capsys, root, *overrides: str, cli=train_main) -> dict:
    argv = ["--config", "ilsvrc2014", f"data.root={root}", *overrides, "--dry-run"]
    assert cli(["train", *argv] if cli is multibox_main else argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object, nothing else
    return json.loads(out[0])


def records(root, split: str, **data):
    return read_split(DataConfig(root=str(root), **data), split)


def test_default_split_is_rcnn_set_in_either_layout(tree, capsys):
    summary = dry_run(capsys, tree)
    repack = (tree / "ImageSets").is_dir()
    assert summary["layout"] == ("repack" if repack else "ilsvrc2014")
    assert summary["split"] == "val1+train_pos"
    assert summary["images_per_source"] == {"val1": 3, "train_pos": 8}
    # val1: one box each of classes 1, 3, 2; train: everything listed (N = 1000)
    assert summary["boxes_per_class"] == {A: 1 + 9, B: 1 + 3, C: 1 + 3}
    # val1 (3) and the 2014 addition are exhaustive; 2013 train images are not
    assert summary["exhaustive_images"] == summary["background_images"] == 4
    assert summary["dropped"]["no_image_file"] == 1
    assert summary["dropped_examples"]["no_image_file"] == [
        f"ILSVRC2013_train/{MISSING_IMAGE}" if repack else MISSING_IMAGE
    ]
    assert summary["dropped"]["not_in_val_list"] == 9887 - 3  # a miniature val


def test_background_from_all_counts_every_image(dist, capsys):
    summary = dry_run(capsys, dist, "train.background_from=all")
    assert summary["background_images"] == summary["images"] == 11


def test_train_pos_n_caps_boxes_per_class(tree, capsys):
    summary = dry_run(capsys, tree, "data.train_split=train_pos_3")
    assert summary["boxes_per_class"] == {A: 3, B: 3, C: 3}
    assert summary["dropped"]["over_box_cap"] == 3  # accordions 2..4: 2 boxes each
    one = dry_run(capsys, tree, "data.train_split=train_pos_1")
    assert one["boxes_per_class"] == {A: 1, B: 1}  # the addition: one A and one B
    assert dry_run(capsys, tree, "data.train_split=train_pos_1k")["boxes"] == 15
    boxes = dry_run(capsys, tree, "data.train_split=train_pos", "data.train_pos_boxes=3")
    assert boxes["boxes_per_class"] == summary["boxes_per_class"]


def test_val_halves_keep_val_txt_indices(tree):
    val_index = {name: i for i, name in enumerate(VAL, 1)}
    for half, names in (("val1", VAL1), ("val2", VAL2)):
        got = records(tree, half).records
        assert [r.image_id for r in got] == names
        assert [r.index for r in got] == [val_index[n] for n in names]
        assert {r.source for r in got} == {half} and all(r.exhaustive for r in got)
        assert all(r.path is not None and r.path.is_file() for r in got)


def test_blacklist_applies_to_val_half_by_val_txt_index(dist, tmp_path):
    bl = tmp_path / "bl.txt"
    bl.write_text(f"2 {A}\n3 {B}\n6 {C}\n")  # val.txt 2 and 6 are val2 images, 3 is val1's
    data = DataConfig(root=str(dist), blacklist=str(bl))
    got = records(dist, "val2").records
    found = split_blacklist(data, default_classes(), "val2", got)
    assert found.pairs == {(2, 1), (6, 3)} and found.outside == 1


def test_ids_without_folders_resolve_through_the_index(dist):
    ids = [r.image_id for r in records(dist, "train_pos").records]
    assert f"{A}/{A}_3" in ids and f"{B}/{B}_2" in ids  # listed as '<name>' only
    index = load_index(dist / "ILSVRC2014_DET_train")
    assert index.resolve("ILSVRC2013_train_00000001") == NEGATIVE
    assert index.resolve("no_such_image") is None
    # a folder named otherwise than the tree (the 2014 batches' tarball names) by basename
    assert index.resolve("ILSVRC2014_DET_train_0000/ILSVRC2014_train_00000001") == ADDITION
    assert index_file(dist / "ILSVRC2014_DET_train").is_file()


def test_index_is_cached_and_rebuilt_when_stale(tmp_path):
    root = write_miniature_tree(tmp_path / "t", "ilsvrc2014")
    train = root / "ILSVRC2014_DET_train"
    first = load_index(train)
    cached = index_file(train)
    stamp = cached.stat().st_mtime_ns
    assert load_index(train).files == first.files and cached.stat().st_mtime_ns == stamp
    (train / C / f"{C}_9.JPEG").write_bytes((train / C / f"{C}_1.JPEG").read_bytes())
    os.utime(train / C, ns=(stamp + 10**9, stamp + 10**9))  # coarse clocks: make it newer
    assert load_index(train).resolve(f"{C}_9") == f"{C}/{C}_9"


def test_sources_and_complete_for(tree):
    got = records(tree, "val2+train_pos_1k+test").records
    by_source = {}
    for r in got:
        by_source.setdefault(r.source, []).append(r)
    assert [len(by_source[s]) for s in ("val2", "train_pos_1k", "test")] == [3, 8, 2]
    train = {r.image_id.removeprefix("ILSVRC2013_train/"): r for r in by_source["train_pos_1k"]}
    assert train[ADDITION].complete_for is None and train[ADDITION].exhaustive
    assert train[f"{A}/{A}_1"].complete_for == frozenset({1})
    assert train[f"{B}/{B}_1"].complete_for == frozenset({2})  # a negative of class 1
    assert all(len(r.labels) == 0 and r.exhaustive for r in by_source["test"])


def test_train_part_left_out_unless_asked(tree):
    part_id = (
        f"{A}/{A}_5" if (tree / "ILSVRC2014_devkit").is_dir() else f"ILSVRC2013_train/{A}/{A}_5"
    )
    default = records(tree, "train_pos")
    assert default.left_out["train_part_excluded"] == [part_id]
    included = records(tree, "train_pos", train_part=True)
    part = [r for r in included.records if r.image_id == part_id]
    assert len(part) == 1 and part[0].complete_for == frozenset()
    assert "train_part_excluded" not in included.left_out


def test_multibox_dry_run_describes_the_same_set(dist, capsys):
    classifier = dry_run(capsys, dist, "data.train_split=val1+train_pos_3")
    multibox = dry_run(capsys, dist, "data.train_split=val1+train_pos_3", cli=multibox_main)
    assert multibox["trainer"] == "multibox"
    for key in ("images_per_source", "boxes_per_class", "dropped", "layout"):
        assert multibox[key] == classifier[key]


@pytest.mark.parametrize(
    ("layout", "xml", "split"),
    [
        ("ilsvrc2014", f"ILSVRC2013_DET_bbox_val/{VAL1[1]}.xml", "val1"),
        ("ilsvrc2014", f"ILSVRC2014_DET_bbox_train/{B}/{B}_1.xml", "train_pos"),
        ("repack", f"Annotations/DET/val/{VAL2[0]}.xml", "val"),
        ("repack", f"Annotations/DET/train/ILSVRC2013_train/{C}/{C}_1.xml", "train_pos_5"),
    ],
)
def test_missing_xml_is_an_error_naming_the_image(tmp_path, capsys, layout, xml, split):
    root = write_miniature_tree(tmp_path / layout, layout)
    (root / xml).unlink()
    argv = ["--config", "ilsvrc2014", f"data.root={root}", f"data.train_split={split}"]
    assert train_main([*argv, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root / xml) in err and "XML annotation missing" in err
    summary = dry_run(capsys, root, f"data.train_split={split}", "data.missing_xml=skip")
    assert summary["dropped"]["xml_missing"] == 1


def test_bad_split_names_are_one_line_errors(dist, tmp_path, capsys):
    argv = ["--config", "ilsvrc2014", f"data.root={dist}", "--dry-run"]
    assert train_main([*argv, "data.train_split=val1+bogus"]) == 1
    assert "unknown split part 'bogus'" in capsys.readouterr().err
    assert train_main([*argv, "data.train_split=val1++val2"]) == 1
    assert "empty part" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    argv[2] = f"data.root={tmp_path / 'empty'}"
    assert train_main(argv) == 1
    assert "not an ILSVRC DET tree" in capsys.readouterr().err


def test_classes_come_from_the_devkits_meta_det_mat(dist, tmp_path):
    from detector.core.config import load_config
    from detector.datasets.classes import load_classes
    from detector.resolve import DRY_RUN, resolve_config

    cfg = resolve_config(load_config("ilsvrc2014", [f"data.root={dist}"]), needs=DRY_RUN)
    assert cfg.data.classes == str(dist / "ILSVRC2014_devkit" / "data" / "meta_det.mat")
    classes = load_classes(cfg.data.classes)  # 200 classes; the hierarchy node is not one
    assert classes.wnids == default_classes().wnids and classes.names == default_classes().names
    bad = tmp_path / "meta_det.mat"
    bad.write_text("not MATLAB")
    with pytest.raises(ValueError, match=r"meta_det.mat: not a devkit meta_det.mat"):
        load_classes(bad)


def test_a_repacks_own_val_half_list_is_read_as_it_is(tmp_path):
    root = write_miniature_tree(tmp_path / "r", "repack")
    (root / "ImageSets" / "DET" / "val2.txt").write_text(f"{VAL2[1]} 1\n")
    (root / "Data" / "DET" / "val2").symlink_to(root / "Data" / "DET" / "val")
    (root / "Annotations" / "DET" / "val2").symlink_to(root / "Annotations" / "DET" / "val")
    got = records(root, "val2").records
    assert [(r.image_id, r.index, r.source) for r in got] == [(VAL2[1], 1, "val2")]


def test_an_ambiguous_basename_is_an_error_naming_the_list(tmp_path):
    root = write_miniature_tree(tmp_path / "t", "ilsvrc2014")
    train = root / "ILSVRC2014_DET_train"
    (train / "other").mkdir()
    (train / "other" / f"{B}_2.JPEG").write_bytes((train / B / f"{B}_2.JPEG").read_bytes())
    with pytest.raises(ValueError, match=r"train_pos_2.txt: .*ambiguous"):
        records(root, "train_pos")


def test_an_unwritable_cache_costs_only_the_cache(dist, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("INCEPTION_RCNN_CACHE", str(blocker))  # mkdir under a file fails
    assert load_index(dist / "ILSVRC2014_DET_train").resolve(f"{A}_3") == f"{A}/{A}_3"
