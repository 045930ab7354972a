"""``python -m detector.run`` on real folders, and its writers (log, COCO, submission, drawing).

The detector is real: tiny random-weight GoogLeNet members saved as checkpoints, selective
search only (MultiBox off), small images; see test_detector.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector import run
from detector.core.structures import Detections
from detector.outputs import (
    OutputError,
    append_record,
    coco_image_ids,
    coco_results,
    read_records,
    repair_jsonl,
)
from detector.visualize import class_color, draw_detections
from eval.submission import cap_per_class, from_records, write_submission
from tests.conftest import FAST as TINY_FAST

FAST = [
    *TINY_FAST,
    "inference.score_threshold=0.01",  # the default: many detections to write
    "data.max_pixels=40000",  # the 300 x 300 image is "huge"
]


@pytest.fixture(scope="module")
def checkpoints(random_members) -> list[str]:
    torch.set_num_threads(1)
    return [str(p) for p in sorted(random_members.glob("member_*.safetensors"))]


def _small(image: np.ndarray, w: int = 150, h: int = 120) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(image, (w, h)))


def good_images(folder: Path) -> list[str]:
    """Seven readable images of awkward kinds; returns their relative names."""
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_small(data.astronaut())).save(folder / "a.jpg", quality=90)
    Image.fromarray(_small(data.coffee())).save(folder / "b.PNG")
    Image.fromarray(_small(data.chelsea())).save(folder / "sub" / "c.png")
    Image.fromarray(_small(data.camera())).save(folder / "gray.png")  # mode L
    Image.fromarray(_small(data.rocket())).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = np.dstack([_small(data.astronaut()), np.full((120, 150), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    deep = _small(data.camera()).astype(np.uint16) * 257
    Image.fromarray(deep).save(folder / "deep16.png")  # I;16
    return ["a.jpg", "alpha.png", "b.PNG", "cmyk.jpg", "deep16.png", "gray.png", "sub/c.png"]


def bad_images(folder: Path) -> dict[str, str]:
    """Unusable files and the words their error must contain."""
    Image.fromarray(_small(data.astronaut())).save(folder / "full.jpg", quality=90)
    raw = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, not a JPEG\n")
    Image.new("RGB", (300, 300), (9, 9, 9)).save(folder / "huge.png")
    return {
        "empty.jpg": "empty file",
        "huge.png": "too many pixels",
        "text.jpg": "not an image",
        "truncated.jpg": "truncated",
    }


def cli(images: Path, out: Path, checkpoints: list[str], *extra: str) -> int:
    return run.main(
        ["--images", str(images), "--output-dir", str(out), "--no-progress"]
        + ["--checkpoints", *checkpoints]
        + list(extra)
        + FAST
    )


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def log_records(out: Path) -> list[dict]:
    """The image records (the header line left out)."""
    lines = log_lines(out)
    assert "header" in lines[0] and all("image" in r for r in lines[1:])
    return lines[1:]


# ---- the CLI --------------------------------------------------------------------------------


def test_mixed_folder_good_and_bad(tmp_path, checkpoints, capsys):
    images = tmp_path / "images"
    good = good_images(images)
    bad = bad_images(images)
    out = tmp_path / "out"
    rc = cli(
        images,
        out,
        checkpoints,
        "--recursive",
        "--coco-results", str(out / "coco.json"),
        "--submission", str(out / "sub.txt"),
        "--save-vis", str(out / "vis"),
        "--score-threshold", "0.2",
    )  # fmt: skip
    assert rc == 1
    records = {r["image"]: r for r in log_records(out)}
    assert sorted(records) == sorted(good + list(bad)) and len(log_records(out)) == 11
    for name in good:
        r = records[name]
        assert r["ok"], r
        assert r["detections"]["image_size"] == [120, 150]
        assert all(s > 0.2 for s in r["detections"]["scores"])
        assert (out / "vis" / f"{name}.jpg").is_file()  # the whole name: a.jpg -> a.jpg.jpg
    for name, words in bad.items():
        r = records[name]
        assert not r["ok"] and words in r["error"] and name in r["error"], r
        assert "\n" not in r["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 11 and summary["ok"] == 7
    assert {f["image"] for f in summary["failed"]} == set(bad)
    assert summary["detections"] == sum(len(records[n]["detections"]["scores"]) for n in good)
    assert {"load", "propose", "score", "nms"} <= set(summary["mean_seconds"])
    printed = capsys.readouterr().out
    assert "11 images, 7 ok, 4 failed" in printed and "truncated.jpg" in printed
    # Submission: 1-based index in the sorted list, inclusive boxes (x2 - 1), best first.
    order = sorted(good + list(bad))
    sub = [line.split() for line in (out / "sub.txt").read_text().splitlines()]
    assert len(sub) == summary["detections"] > 0
    first = records[order[0]]["detections"]  # a.jpg
    rows = [r for r in sub if r[0] == "1"]
    assert len(rows) == len(first["scores"])
    assert float(rows[0][2]) == pytest.approx(first["scores"][0], abs=1e-6)
    x1, y1, x2, y2 = first["boxes"][0]
    assert [float(v) for v in rows[0][3:]] == pytest.approx([x1, y1, x2 - 1, y2 - 1], abs=0.01)
    assert {int(r[0]) for r in sub} <= {order.index(n) + 1 for n in good}
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco) == len(sub)
    assert coco[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
    Image.open(out / "vis" / "a.jpg.jpg").verify()


def test_resume_after_interruption(tmp_path, checkpoints):
    images = tmp_path / "images"
    good_images(images)
    for p in list((images / "sub").iterdir()) + list(images.glob("*1*.png")):
        p.unlink()  # five images keep the test short
    out = tmp_path / "out"
    assert cli(images, out, checkpoints) == 0
    full = (out / "detections.jsonl").read_bytes()
    header, *lines = full.splitlines(keepends=True)
    assert len(lines) == 5
    # Interrupted while writing the third record: two whole lines and half of one.
    (out / "detections.jsonl").write_bytes(header + lines[0] + lines[1] + lines[2][:40])
    assert cli(images, out, checkpoints, "--resume") == 0
    first, *after = (out / "detections.jsonl").read_bytes().splitlines(keepends=True)
    assert first == header and after[:2] == lines[:2]  # kept, not recomputed
    by_image = [json.loads(line)["image"] for line in after]
    assert sorted(by_image) == sorted(json.loads(line)["image"] for line in lines)  # no dups
    old = {json.loads(x)["image"]: json.loads(x)["detections"] for x in lines}
    for x in after:  # recomputed images give the same detections
        r = json.loads(x)
        assert r["detections"]["boxes"] == old[r["image"]]["boxes"]
    # Nothing left to do: the log is unchanged (the checkpoints are still checked first).
    assert cli(images, out, ["/nonexistent.safetensors"], "--resume") == 2
    assert cli(images, out, checkpoints, "--resume") == 0
    assert (out / "detections.jsonl").read_bytes().splitlines(keepends=True) == [first, *after]
    assert json.loads((out / "summary.json").read_text())["this_run"]["processed"] == 0


def test_resume_retries_failed_images(tmp_path, checkpoints):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_small(data.coffee())).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert cli(images, out, checkpoints) == 1
    assert [r["ok"] for r in log_records(out)] == [True, False]
    Image.fromarray(_small(data.chelsea())).save(images / "b.jpg")  # the user fixes it
    assert cli(images, out, checkpoints, "--resume") == 0
    records = log_records(out)
    assert [(r["image"], r["ok"]) for r in records] == [("a.png", True), ("b.jpg", True)]


def test_usage_and_setup_errors_exit_2(tmp_path, checkpoints, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_small(data.coffee())).save(images / "a.png")
    out = tmp_path / "out"
    assert cli(images, out, checkpoints, "inference.no_such_key=1") == 2
    assert "no_such_key" in capsys.readouterr().err
    assert cli(tmp_path / "missing", out, checkpoints) == 2
    assert "missing: no such folder or file" in capsys.readouterr().err
    assert cli(images, out, [str(tmp_path / "m9.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli(images, out, checkpoints) == 0
    assert cli(images, out, checkpoints) == 2  # the log exists: resume or overwrite
    assert "--resume" in capsys.readouterr().err
    assert cli(images, out, checkpoints, "--overwrite") == 0
    assert len(log_records(out)) == 1
    with pytest.raises(SystemExit) as info:
        run.main(["--recursive"])  # --images is required
    assert info.value.code == 2


def test_empty_folder(tmp_path, checkpoints, capsys):
    (tmp_path / "images").mkdir()
    out = tmp_path / "out"
    rc = cli(tmp_path / "images", out, checkpoints, "--submission", str(out / "s.txt"))
    assert rc == 0
    assert len(log_lines(out)) == 1 and (out / "s.txt").read_text() == ""  # the header only
    assert json.loads((out / "summary.json").read_text())["images"] == 0
    assert "no images found" in capsys.readouterr().err


def test_image_set_indices(tmp_path, checkpoints):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_small(data.coffee())).save(images / "x_002.JPEG")
    (tmp_path / "val.txt").write_text("x_001 1\nx_002 2\n")
    out = tmp_path / "out"
    args = ["--image-set", str(tmp_path / "val.txt"), "--submission", str(out / "s.txt")]
    assert cli(images, out, checkpoints, "--score-threshold", "0", *args) == 0
    lines = (out / "s.txt").read_text().splitlines()
    assert lines and all(line.startswith("2 ") for line in lines)
    (tmp_path / "val.txt").write_text("x_001 1\n")
    assert cli(images, out, checkpoints, "--overwrite", *args) == 2


# ---- the writers ----------------------------------------------------------------------------


def test_log_lines_partial_and_corrupt(tmp_path):
    import os

    log = tmp_path / "d.jsonl"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    append_record(fd, {"image": "a.jpg", "ok": True, "detections": {}})
    append_record(fd, {"image": "b.jpg", "ok": False, "error": "b.jpg: empty file (0 bytes)"})
    append_record(fd, {"image": "a.jpg", "ok": True, "detections": {"x": 1}})
    os.close(fd)
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"image": "c.jpg", "ok": tr')
    records, good = read_records(log)
    assert [r["image"] for r in records] == ["a.jpg", "b.jpg", "a.jpg"] and good == len(whole)
    kept = repair_jsonl(log)  # first ok record per image; failures and the half line dropped
    assert [(r["image"], r["detections"]) for r in kept] == [("a.jpg", {})]
    assert log.read_text() == '{"image":"a.jpg","ok":true,"detections":{}}\n'
    log.write_text('garbage\n{"image": "a.jpg", "ok": true}\n')
    with pytest.raises(OutputError, match=r"d\.jsonl:1: bad record"):
        read_records(log)
    log.write_text('{"image": "a.jpg", "ok": true}\n\x00\x00\x00\n')  # a garbled last line
    assert len(read_records(log)[0]) == 1


def submission_lines(pairs, max_per_class_total: int, tmp_path: Path) -> list[str]:
    path = write_submission(
        tmp_path / "s.txt", cap_per_class(from_records(pairs), max_per_class_total)
    )
    return path.read_text().splitlines(keepends=True)


def test_submission_and_coco_hand_computed(tmp_path):
    rec = {
        "detections": {
            "boxes": [[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]],
            "scores": [0.9, 0.4],
            "labels": [2, 2],
        }
    }
    other = {"detections": {"boxes": [[1.0, 1.0, 2.0, 2.0]], "scores": [0.5], "labels": [2]}}
    lines = submission_lines([(3, rec), (1, other)], 2, tmp_path)
    # Class 2 keeps its two best (0.9, 0.5) over the set; ordered by image index.
    assert lines == [
        "1 2 0.5 1.00 1.00 1.00 1.00\n",
        "3 2 0.9 10.00 20.00 29.00 59.00\n",
    ]
    assert len(submission_lines([(3, rec), (1, other)], 0, tmp_path)) == 3
    assert coco_results([(7, rec)])[0] == {
        "image_id": 7,
        "category_id": 2,
        "bbox": [10.0, 20.0, 20.0, 40.0],
        "score": 0.9,
    }
    assert submission_lines([], 0, tmp_path) == [] and coco_results([]) == []
    assert coco_image_ids(["000000397133.jpg", "12.png"]) == [397133, 12]
    assert coco_image_ids(["a.jpg", "12.png"]) == [1, 2]


def test_draw_detections():
    image = np.zeros((40, 50, 3), np.uint8)
    det = Detections(
        boxes=np.array([[10, 20, 30, 35]], np.float32),
        scores=np.array([0.8], np.float32),
        labels=np.array([1]),
        class_names=["cat"],
    )
    out = draw_detections(image, det)
    assert out.shape == image.shape and out.dtype == np.uint8 and image.max() == 0
    # The box covers columns 10..29 and rows 20..34: its outline is drawn on them.
    assert tuple(out[34, 15]) == class_color(1) and tuple(out[27, 29]) == class_color(1)
    assert out[27, 20].max() == 0 and out[27, 31].max() == 0  # inside and outside untouched
    np.testing.assert_array_equal(draw_detections(image, Detections()), image)
    np.testing.assert_array_equal(draw_detections(image, det, top=1, min_score=0.9), image)
