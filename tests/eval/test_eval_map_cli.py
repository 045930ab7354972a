"""``python -m eval.map`` end to end on a tiny ILSVRC tree written to tmp_path (no images)."""

from __future__ import annotations

import json

import pytest

from eval import map as eval_map

CLASSES = "n01 1 cat\nn02 2 dog\nn03 3 tiny thing\n"  # map_det.txt: <wnid> <id> <name>


def xml(name: str, objects: list[tuple[str, int, int, int, int]]) -> str:
    body = "".join(
        f"<object><name>{w}</name><bndbox><xmin>{x0}</xmin><xmax>{x1}</xmax>"
        f"<ymin>{y0}</ymin><ymax>{y1}</ymax></bndbox></object>"
        for w, x0, y0, x1, y1 in objects
    )
    return f"<annotation><filename>{name}</filename><size><width>300</width><height>200</height></size>{body}</annotation>"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "ilsvrc"
    ann = root / "Annotations" / "DET" / "val"
    ann.mkdir(parents=True)
    (root / "ImageSets" / "DET").mkdir(parents=True)
    (root / "map_det.txt").write_text(CLASSES)
    images = {
        "a": [("n01", 0, 0, 99, 99), ("n02", 150, 50, 249, 149)],
        "b": [("n01", 10, 10, 109, 109)],
        "c": [],  # no objects
    }
    for name, objects in images.items():
        (ann / f"{name}.xml").write_text(xml(name, objects))
    (root / "ImageSets" / "DET" / "val.txt").write_text("a 1\nb 2\nc 3\n")
    return root


def run(tree, tmp_path, lines: str, *extra: str):
    sub = tmp_path / "sub.txt"
    sub.write_text(lines)
    argv = ["--split", "val", "--data-root", str(tree), "--detections", str(sub), *extra]
    return eval_map.main(argv)


def test_scores_file_prints_table_and_writes_json(tree, tmp_path, capsys):
    lines = (
        "1 1 0.9 0 0 99 99\n"  # TP cat
        "3 1 0.8 0 0 99 99\n"  # FP cat (image without objects)
        "2 1 0.7 10 10 109 109\n"  # TP cat
        "1 2 0.6 150 50 249 149\n"  # TP dog
    )
    out = tmp_path / "report" / "map.json"
    assert run(tree, tmp_path, lines, "--json", str(out), "--plot-pr", str(tmp_path / "pr")) == 0
    text = capsys.readouterr().out
    # cat: TP FP TP, npos 2 -> AP = 0.5 * 1 + 0.5 * 2/3; dog 1.0. K = 2, the largest class
    # id in the ground truth (the class list has 3): class 3 is not evaluated.
    cat_ap = 0.5 + 0.5 * 2 / 3
    assert f"mAP: {100 * (cat_ap + 1.0) / 2:.2f}% (devkit: mean over classes 1..2;" in text
    assert f"mean AP over the 2 classes with positives: {100 * (cat_ap + 1.0) / 2:.2f}%" in text
    assert "pycocotools AP@0.5 (cross-check" in text
    table = [ln.split() for ln in text.splitlines() if ln.split()[:1] in (["1"], ["2"], ["3"])]
    assert [row[0] for row in table] == ["2", "1"]  # sorted by AP
    report = json.loads(out.read_text())
    assert report["mAP"] == pytest.approx((cat_ap + 1.0) / 2) and report["mAP_reason"] is None
    assert report["mAP_classes_with_positives"] == report["mAP"]
    assert report["num_classes"] == 2
    cat = report["classes"][0]
    assert (cat["wnid"], cat["name"], cat["npos"], cat["num_dets"]) == ("n01", "cat", 2, 3)
    assert report["settings"]["split"] == "val"
    assert report["coco_check"]["ap"][2] is None
    assert sorted(p.name for p in (tmp_path / "pr").iterdir()) == ["001_n01.png", "002_n02.png"]


def test_nan_map_is_printed_with_its_reason_and_null_in_json(tree, tmp_path, capsys):
    """The dog (class 2) of image 1 is blacklisted, so the class has no positives; its
    detection (also blacklisted) makes its AP NaN, and the devkit's mAP NaN."""
    bl = tmp_path / "bl.txt"
    bl.write_text("1 n02\n")
    lines = "1 1 0.9 0 0 99 99\n2 1 0.8 10 10 109 109\n1 2 0.6 150 50 249 149\n"
    out = tmp_path / "map.json"
    assert (
        run(tree, tmp_path, lines, "--blacklist", str(bl), "--no-coco-check", "--json", str(out))
        == 0
    )
    text = capsys.readouterr().out
    assert (
        "mAP: nan (devkit: mean over classes 1..2: class 2 has detections but no positives;" in text
    )
    assert "mean AP over the 1 classes with positives: 100.00%" in text
    report = json.loads(out.read_text())
    assert report["mAP"] is None
    assert report["mAP_reason"] == "class 2 has detections but no positives"
    assert report["mAP_classes_with_positives"] == 1.0
    assert report["classes"][1]["ap"] is None and report["classes"][1]["num_ignored"] == 1


def test_detections_above_k_are_noted_not_scored(tree, tmp_path, capsys):
    lines = "1 1 0.9 0 0 99 99\n2 1 0.8 10 10 109 109\n1 2 0.6 150 50 249 149\n1 3 0.9 0 0 9 9\n"
    assert run(tree, tmp_path, lines, "--no-coco-check") == 0
    text = capsys.readouterr().out
    assert "mAP: 100.00% (devkit: mean over classes 1..2;" in text
    assert "note: 1 detections of classes above K = 2" in text


def test_blacklist_file(tree, tmp_path, capsys):
    bl = tmp_path / "bl.txt"
    bl.write_text("3 n01\n")  # the FP on image 3 is ignored
    assert (
        run(
            tree,
            tmp_path,
            "1 1 0.9 0 0 99 99\n3 1 0.8 0 0 99 99\n",
            "--blacklist",
            str(bl),
            "--no-coco-check",
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "1 detections and 0 objects ignored" in text
    assert "pycocotools" not in text


def test_blacklist_on_val2_maps_through_val_txt_names(tree, tmp_path, capsys):
    """val2 lists b, then d: the blacklist's val.txt index 2 (b) is val2's image 1. Before,
    its pair landed on val2's line 2 (d) and hit nothing, while b's cat stayed counted."""
    (tree / "Annotations" / "DET" / "val2").symlink_to(tree / "Annotations" / "DET" / "val")
    sets = tree / "ImageSets" / "DET"
    (sets / "val.txt").write_text("a 1\nb 2\nc 3\nd 4\n")
    (tree / "Annotations" / "DET" / "val" / "d.xml").write_text(xml("d", [("n02", 0, 0, 99, 99)]))
    (sets / "val2.txt").write_text("b 1\nd 2\n")
    bl = tmp_path / "bl.txt"
    bl.write_text("2 n01\n4 n02\n1 n01\n")  # b's cat, d's dog, and a (not in val2)
    lines = "1 1 0.9 10 10 109 109\n2 2 0.8 0 0 99 99\n"
    out = tmp_path / "map.json"
    argv = ["--split", "val2", "--blacklist", str(bl), "--no-coco-check", "--json", str(out)]
    assert run(tree, tmp_path, lines, *argv) == 0
    text = capsys.readouterr().out
    assert "2 of its 3 image/class pairs on this split's images, mapped through" in text
    settings = json.loads(out.read_text())["settings"]
    assert settings["num_ignored_ground_truths"] == 2 and settings["num_ignored_detections"] == 2
    (sets / "val.txt").unlink()
    assert run(tree, tmp_path, lines, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val.txt indices" in err and "val2" in err


def test_empty_submission_scores_with_a_warning(tree, tmp_path, capsys):
    assert run(tree, tmp_path, "", "--no-coco-check") == 0
    out, err = capsys.readouterr()
    assert "mAP: 0.00%" in out
    assert f"warning: {tmp_path / 'sub.txt'}: no detections (empty submission)" in err


def test_overrides_after_an_option(tree, tmp_path, capsys):
    """``--split val inference.nms_iou=0.4 --no-coco-check eval.iou=0.5``: once "unrecognized"."""
    lines = "1 1 0.9 0 0 99 99\n"
    assert run(tree, tmp_path, lines, "eval.iou=0.4", "--no-coco-check", "eval.iou=0.5") == 0
    out = capsys.readouterr().out
    assert "mAP: " in out and "pycocotools" not in out


@pytest.mark.parametrize(
    ("lines", "extra", "message"),
    [
        ("1 1 0.9 0 0 99\n", [], "sub.txt:1: expected 7 fields"),
        ("4 1 0.9 0 0 99 99\n", [], "sub.txt:1: image_index 4 is not in the split"),
        ("1 9 0.9 0 0 99 99\n", [], "sub.txt:1: class_id 9 outside 1..3"),
        ("", ["--blacklist", "/nonexistent/bl.txt"], "bl.txt: blacklist file not found"),
        ("", ["--split", "nosuch"], "nosuch.txt: split list not found"),
        ("", ["data.nosuch=1"], "unknown config key 'data.nosuch'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tree, tmp_path, capsys, lines, extra, message):
    assert run(tree, tmp_path, lines, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("eval.map: error: ") and message in err


def test_malformed_annotation_exits_2(tree, tmp_path, capsys):
    (tree / "Annotations" / "DET" / "val" / "b.xml").write_text("<annotation><object>")
    assert run(tree, tmp_path, "") == 2
    assert "b.xml: not a readable XML annotation" in capsys.readouterr().err


def test_overflowing_size_or_nan_box_exits_2_naming_file_and_field(tree, tmp_path, capsys):
    """``<width>1e400</width>`` once escaped as an OverflowError traceback."""
    b = tree / "Annotations" / "DET" / "val" / "b.xml"
    b.write_text(xml("b", []).replace("<width>300</width>", "<width>1e400</width>"))
    assert run(tree, tmp_path, "") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval.map: error: ") and len(err.splitlines()) == 1
    assert f"{b}: <size/width> is not a finite number" in err
    b.write_text(
        xml("b", [("n01", 10, 10, 109, 109)]).replace("<xmax>109</xmax>", "<xmax>nan</xmax>")
    )
    assert run(tree, tmp_path, "") == 2
    assert f"{b}: object 0: <xmax> is not a finite number" in capsys.readouterr().err


def test_cross_check_is_opt_in_above_the_size_limit(tree, tmp_path, capsys):
    """3 images > eval.coco_check_max_images=2: skipped with a note unless --coco-check."""
    lines = "1 1 0.9 0 0 99 99\n"
    out = tmp_path / "map.json"
    assert run(tree, tmp_path, lines, "eval.coco_check_max_images=2", "--json", str(out)) == 0
    text, err = capsys.readouterr()
    assert "pycocotools AP@0.5" not in text
    assert "note: cross-check skipped: 3 images > eval.coco_check_max_images 2" in err
    assert "--coco-check" in err
    assert "skipped" in json.loads(out.read_text())["coco_check"]
    assert run(tree, tmp_path, lines, "eval.coco_check_max_images=2", "--coco-check") == 0
    assert "pycocotools AP@0.5 (cross-check" in capsys.readouterr().out
    assert run(tree, tmp_path, lines, "eval.coco_check_max_images=3") == 0  # at the limit: runs
    assert "pycocotools AP@0.5 (cross-check" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(tree, tmp_path, lines, "--coco-check", "--no-coco-check")


def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit):
        eval_map.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--split",
        "--data-root",
        "--detections",
        "--blacklist",
        "--classes",
        "--json",
        "--plot-pr",
        "--no-coco-check",
        "--coco-check",
        "--config",
    ):
        assert flag in text


def test_runs_the_detector_when_no_detections_given(tree, tmp_path, capsys):
    """Real detector: two tiny random-weight GoogLeNets saved as checkpoints, selective search."""
    import cv2
    import torch
    from skimage import data

    from detector.datasets.classes import load_classes
    from tests.conftest import save_random_members

    torch.set_num_threads(1)
    models = tmp_path / "models"
    save_random_members(models, classes=load_classes(tree / "map_det.txt"))
    images = tree / "Data" / "DET" / "val"
    images.mkdir(parents=True)
    for name, picture in (("a", data.astronaut()), ("b", data.chelsea())):
        cv2.imwrite(str(images / f"{name}.JPEG"), cv2.resize(picture, (150, 100))[:, :, ::-1])
    out = tmp_path / "out"
    argv = [
        "--split",
        "val",
        "--data-root",
        str(tree),
        "--output-dir",
        str(out),
        "--max-images",
        "2",
    ]
    overrides = [
        f"model.checkpoint_dir={models}",
        "model.members=2",
        "proposals.multibox.enabled=false",
        "proposals.selective_search.resize_width=100",
        "proposals.selective_search.min_side=30",
        "proposals.selective_search.cache_dir=none",
        "proposals.selective_search.workers=-1",  # sequential: no process pool in the test
        "inference.precision=fp32",
        "inference.score_threshold=0.2",
        "inference.threads=1",
    ]
    assert eval_map.main(argv + ["--no-coco-check", *overrides]) == 0
    captured = capsys.readouterr()
    text = captured.out
    submission = out / "val_submission.txt"
    assert submission.is_file() and f"-> {submission}" in text
    # It says what it is doing before the models load, and shows progress.
    assert f"eval.map: running the detector on 2 images of split val -> {out / 'val'}" in text
    assert "2/2" in captured.err
    assert "split val, 2 images" in text and "mAP: " in text
    rows = [ln.split() for ln in submission.read_text().splitlines()]
    assert all(len(r) == 7 and r[0] in ("1", "2") and 1 <= int(r[1]) <= 3 for r in rows)
    # The run is detector.run's, in <output-dir>/val: a second evaluation continues it (no
    # image detected again, the same submission), --overwrite detects again.
    first = submission.read_text()
    assert eval_map.main(argv + ["--no-coco-check", *overrides]) == 0
    assert "this run 0 images" in capsys.readouterr().out
    assert submission.read_text() == first
    assert eval_map.main(argv + ["--no-coco-check", "--overwrite", *overrides]) == 0
    assert "this run 2 images" in capsys.readouterr().out
    assert submission.read_text() == first


def test_real_root_without_checkpoints_never_uses_the_demo_models(
    tree, tmp_path, capsys, monkeypatch
):
    """The paper config on a real tree with no members configured: an error saying what to set
    and how to train, although the demo's models are built (it once scored with those)."""
    from tests.conftest import save_random_members

    monkeypatch.setenv("INCEPTION_RCNN_CACHE", str(tmp_path / "cache"))
    from detector.core.paths import demo_models_dir

    save_random_members(demo_models_dir(), n=6)  # "the demo models built"
    argv = ["--config", "ilsvrc2014", "--data-root", str(tree), "--split", "val"]
    assert eval_map.main([*argv, "proposals.multibox.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert f"no ensemble checkpoints for data root {tree}" in err
    assert "model.checkpoint_dir" in err and "python -m detector.train --config ilsvrc2014" in err
    errors = [ln for ln in err.strip().splitlines() if not ln.startswith("note: ")]
    assert len(errors) == 1  # and a note: the 3-class tree drops the ILSVRC blacklist
    assert eval_map.main(argv) == 2  # MultiBox on: it needs its own checkpoint too
    assert "no ensemble checkpoints" in capsys.readouterr().err


def test_scores_a_detector_run_folder_or_its_log(tree, tmp_path, capsys):
    """``--detections`` takes what ``detector.run`` wrote: its folder, its detections.jsonl,
    or its submission file; all three score the same."""
    import cv2
    import torch
    from skimage import data

    from detector import run
    from detector.datasets.classes import load_classes
    from tests.conftest import FAST, save_random_members

    torch.set_num_threads(1)
    models = save_random_members(tmp_path / "models", classes=load_classes(tree / "map_det.txt"))
    images = tree / "Data" / "DET" / "val"
    images.mkdir(parents=True)
    for name, picture in (("a", data.astronaut()), ("b", data.chelsea())):
        cv2.imwrite(str(images / f"{name}.JPEG"), cv2.resize(picture, (150, 100))[:, :, ::-1])
    out = tmp_path / "run"
    argv = ["--images", str(images), "--output-dir", str(out), "--no-progress"]
    argv += ["--image-set", str(tree / "ImageSets/DET/val.txt"), "--submission", str(out / "s.txt")]
    assert run.main([*argv, "--checkpoints", *map(str, models), *FAST]) == 0
    capsys.readouterr()
    tables = []
    for what in (out, out / "detections.jsonl", out / "s.txt"):
        args = ["--split", "val", "--data-root", str(tree), "--detections", str(what)]
        assert eval_map.main([*args, "--no-coco-check"]) == 0
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        tables.append([ln for ln in lines[1:] if "scored in" not in ln])
        assert "mAP: " in captured.out
        if what != out / "s.txt":
            # image c has no image file, so no record: its objects (none) count as missed
            assert "1 of the 3 images of split val have no detections" in captured.err
    assert tables[0] == tables[1] == tables[2]
    (tmp_path / "empty").mkdir()
    args = ["--split", "val", "--data-root", str(tree), "--detections", str(tmp_path / "empty")]
    assert eval_map.main(args) == 2
    assert "without detections.jsonl" in capsys.readouterr().err
