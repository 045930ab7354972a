"""``python -m detector.run``: resuming by identity, output folders that do not collide, the
forms of ``--images``, outputs that must not destroy inputs, output errors, unlistable folders.

Real detector (tiny random-weight members, selective search only) on two or three small
images, as in test_run_cli.py.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector import run
from detector.outputs import read_log
from tests.conftest import FAST


@pytest.fixture(scope="module")
def checkpoints(random_members) -> list[str]:
    torch.set_num_threads(1)
    return [str(p) for p in sorted(random_members.glob("member_*.safetensors"))]


def small(picture: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(picture, (150, 120)))


def folder(path: Path, pictures: dict[str, np.ndarray]) -> Path:
    for name, picture in pictures.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small(picture)).save(path / name)
    return path


def detect(images, checkpoints, *extra, out: Path | None = None) -> int:
    where = ["--output-dir", str(out)] if out is not None else []
    argv = ["--images", str(images), *where, "--no-progress", "--checkpoints", *checkpoints]
    return run.main([*argv, *extra, *FAST])


def records(out: Path) -> list[dict]:
    header, recs, _ = read_log(out / "detections.jsonl")
    assert header is not None
    return recs


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("detector.run: error: ")
    return err[0]


# ---- 15.1, 13.3: resume by identity ---------------------------------------------------------


def test_resume_refuses_a_log_of_another_folder(tmp_path, checkpoints, capsys):
    first = folder(tmp_path / "first", {"a.png": data.coffee(), "b.png": data.chelsea()})
    other = folder(tmp_path / "other", {"a.png": data.astronaut(), "b.png": data.rocket()})
    out = tmp_path / "out"
    assert detect(first, checkpoints, out=out) == 0
    before = (out / "detections.jsonl").read_bytes()
    capsys.readouterr()
    assert detect(other, checkpoints, "--resume", out=out) == 2
    line = one_error_line(capsys)
    assert f"it was written for the images of {first}, not {other}" in line
    assert "pass --overwrite to start over" in line
    assert (out / "detections.jsonl").read_bytes() == before  # untouched
    assert detect(other, checkpoints, "--overwrite", out=out) == 0
    assert {r["image"] for r in records(out)} == {"a.png", "b.png"}


def test_resume_refuses_an_image_whose_content_changed(tmp_path, checkpoints, capsys):
    images = folder(tmp_path / "images", {"a.png": data.coffee(), "b.png": data.chelsea()})
    out = tmp_path / "out"
    assert detect(images, checkpoints, out=out) == 0
    rec = {r["image"]: r for r in records(out)}
    assert rec["a.png"]["file"]["size"] == (images / "a.png").stat().st_size
    assert len(rec["a.png"]["file"]["sha256"]) == 64
    # Touched, same bytes: still the same image.
    os.utime(images / "a.png", ns=(1, 1))
    assert detect(images, checkpoints, "--resume", out=out) == 0
    # Another picture under the same name: refused, naming it.
    Image.fromarray(small(data.astronaut())).save(images / "b.png")
    capsys.readouterr()
    assert detect(images, checkpoints, "--resume", out=out) == 2
    line = one_error_line(capsys)
    assert "cannot resume: 1 image(s) changed since they were recorded (b.png)" in line


def test_resume_refuses_other_settings_or_models(tmp_path, checkpoints, capsys):
    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    out = tmp_path / "out"
    assert detect(images, checkpoints, out=out) == 0
    capsys.readouterr()
    assert detect(images, checkpoints, "--resume", "--score-threshold", "0.5", out=out) == 2
    line = one_error_line(capsys)
    assert "other settings (inference.score_threshold 0.2 -> 0.5)" in line
    swapped = checkpoints[::-1]  # same files, other members: other models
    assert detect(images, swapped, "--resume", out=out) == 2
    assert "other models (member 0, 1 checkpoint contents)" in one_error_line(capsys)
    assert detect(images, checkpoints[:1], "--resume", out=out) == 2
    assert "other models (2 members, now 1)" in one_error_line(capsys)
    # What does not change detections may differ: threads, chunk size, drawing threshold.
    assert detect(images, checkpoints, "--resume", "--chunk-size", "7", out=out) == 0


def test_old_log_without_header_is_not_resumed(tmp_path, checkpoints, capsys):
    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    out = tmp_path / "out"
    out.mkdir()
    old = {"image": "a.png", "ok": True, "detections": {"boxes": [], "scores": [], "labels": []}}
    (out / "detections.jsonl").write_text(json.dumps(old) + "\n")
    assert detect(images, checkpoints, "--resume", out=out) == 2
    line = one_error_line(capsys)
    assert "no header (written by an older version)" in line and "--overwrite" in line


# ---- 15.2: output folders -------------------------------------------------------------------


def test_every_run_gets_a_new_folder_and_resume_names_it(
    tmp_path, checkpoints, capsys, monkeypatch
):
    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    monkeypatch.chdir(tmp_path)
    assert detect(images, checkpoints) == 0
    assert "-> runs/detect/predict\n" in capsys.readouterr().out
    assert detect(images, checkpoints) == 0
    printed = capsys.readouterr().out
    assert "-> runs/detect/predict2\n" in printed and "results in runs/detect/predict2/" in printed
    assert len(records(tmp_path / "runs/detect/predict2")) == 1
    assert detect(images, checkpoints, "--resume") == 2
    line = one_error_line(capsys)
    assert "name its folder with --output-dir (the latest is runs/detect/predict2)" in line
    # A run stopped at setup leaves no empty folder behind.
    assert detect(images, [str(tmp_path / "none.safetensors")]) == 2
    assert not (tmp_path / "runs/detect/predict3").exists()


def test_interrupt_prints_the_command_that_resumes(tmp_path, checkpoints, capsys, monkeypatch):
    from detector.detector import Detector

    images = folder(tmp_path / "images", {"a.png": data.coffee(), "b.png": data.chelsea()})
    monkeypatch.chdir(tmp_path)
    real = Detector.detect_many

    def interrupted(self, paths, **kwargs):
        for i, item in enumerate(real(self, paths, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Detector, "detect_many", interrupted)
    assert detect(images, checkpoints, "--overwrite") == 130
    err = capsys.readouterr().err
    command = err.split("interrupted; to continue: ", 1)[1].strip()
    expected = "python -m detector.run --output-dir runs/detect/predict --resume --images "
    assert command.startswith(expected + str(images))
    assert "--overwrite" not in command
    assert len(records(tmp_path / "runs/detect/predict")) == 1
    monkeypatch.setattr(Detector, "detect_many", real)
    argv = shlex.split(command)[3:]  # what follows `python -m detector.run`
    assert run.main(argv) == 0
    assert sorted(r["image"] for r in records(tmp_path / "runs/detect/predict")) == [
        "a.png",
        "b.png",
    ]


# ---- 15.4: the forms of --images ------------------------------------------------------------


def test_images_a_single_file_a_list_and_skipped_subfolders(tmp_path, checkpoints, capsys):
    images = folder(
        tmp_path / "images",
        {"a.png": data.coffee(), "sub/b.png": data.chelsea(), "sub/deeper/c.jpg": data.rocket()},
    )
    assert detect(images / "a.png", checkpoints, out=tmp_path / "one") == 0
    assert [r["image"] for r in records(tmp_path / "one")] == ["a.png"]
    listing = images / "list.txt"
    listing.write_text("# two of them\nsub/b.png\n\na.png\nsub/b.png\nmissing.jpg\n")
    capsys.readouterr()
    assert detect(listing, checkpoints, out=tmp_path / "list") == 1  # missing.jpg fails
    recs = records(tmp_path / "list")
    assert [r["image"] for r in recs] == ["sub/b.png", "a.png", "missing.jpg"]
    assert "missing.jpg: no such file" in recs[2]["error"]
    assert "3 images from the list" in capsys.readouterr().out
    assert detect(images, checkpoints, out=tmp_path / "flat") == 0
    err = capsys.readouterr().err
    assert "2 images in subfolders of" in err and "pass --recursive" in err
    assert [r["image"] for r in records(tmp_path / "flat")] == ["a.png"]
    (tmp_path / "binary.dat").write_bytes(b"\x00\xff\x00")
    assert detect(tmp_path / "binary.dat", checkpoints, out=tmp_path / "bad") == 2
    assert "neither an image" in one_error_line(capsys)


# ---- 13.2: outputs never destroy inputs or each other ---------------------------------------


def test_outputs_that_would_overwrite_inputs_or_each_other_are_refused(
    tmp_path, checkpoints, capsys
):
    images = folder(tmp_path / "images", {"a.png": data.coffee(), "sub/b.png": data.chelsea()})
    before = {p: p.read_bytes() for p in images.rglob("*.png")}
    out = tmp_path / "out"
    cases = [
        (["--save-vis", str(images)], "is inside the folder of the images"),
        (["--save-vis", str(images / "sub" / "vis"), "--recursive"], "inside the folder"),
        (["--submission", str(out / "x.txt"), "--coco-results", str(out / "x.txt")], "same file"),
        (["--submission", str(out / "detections.jsonl")], "the log would be the same file"),
        (["--coco-results", str(out / "summary.json")], "would be the same file"),
        (["--output", str(images / "a.png")], "would overwrite one of the images"),
        (["--submission", str(checkpoints[0])], "would overwrite checkpoint"),
        (["--submission", str(images)], "is a folder"),
    ]
    for extra, words in cases:
        assert detect(images, checkpoints, *extra, out=out) == 2, extra
        assert words in one_error_line(capsys), extra
    assert {p: p.read_bytes() for p in images.rglob("*.png")} == before
    assert not (out / "detections.jsonl").exists()


def test_drawings_keep_the_whole_file_name(tmp_path, checkpoints):
    images = folder(tmp_path / "images", {"a.jpg": data.coffee(), "a.png": data.chelsea()})
    vis = tmp_path / "vis"
    assert detect(images, checkpoints, "--save-vis", str(vis), "--vis-threshold", "0", out=tmp_path / "o") == 0  # fmt: skip
    assert sorted(p.name for p in vis.iterdir()) == ["a.jpg.jpg", "a.png.jpg"]
    assert run.vis_path(vis, "../up/x.png") == vis / "__" / "up" / "x.png.jpg"
    assert run.vis_path(vis, "/abs/x.png") == vis / "abs" / "x.png.jpg"


# ---- 13.4: output errors --------------------------------------------------------------------


def test_unwritable_output_is_found_before_the_models_load(
    tmp_path, checkpoints, capsys, monkeypatch
):
    from detector.detector import Detector

    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    (tmp_path / "file").write_text("a file, not a folder")

    def never(cfg):
        raise AssertionError("models loaded before the output was checked")

    monkeypatch.setattr(Detector, "from_config", staticmethod(never))
    assert detect(images, checkpoints, out=tmp_path / "file" / "out") == 3
    line = one_error_line(capsys)
    assert f"{tmp_path / 'file' / 'out'}: cannot write here" in line
    vis = ["--save-vis", str(tmp_path / "file" / "vis")]
    assert detect(images, checkpoints, *vis, out=tmp_path / "out") == 3
    assert f"{tmp_path / 'file' / 'vis'}: cannot write here" in one_error_line(capsys)


def test_disk_full_keeps_the_log_valid_and_resumable(tmp_path, checkpoints, capsys, monkeypatch):
    import detector.outputs as outputs

    images = folder(
        tmp_path / "images",
        {"a.png": data.coffee(), "b.png": data.chelsea(), "c.png": data.rocket()},
    )
    out = tmp_path / "out"
    real_write, calls = os.write, []

    def full_disk(fd, payload):
        if not payload.startswith(b"{"):  # not the log (os.write is everyone's)
            return real_write(fd, payload)
        calls.append(len(payload))
        if len(calls) == 3:  # the header, a.png, then half of b.png's line lands: ENOSPC
            real_write(fd, payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, payload)

    monkeypatch.setattr(outputs.os, "write", full_disk)
    assert detect(images, checkpoints, out=out) == 3
    line = one_error_line(capsys)
    assert f"{out / 'detections.jsonl'}: cannot write the log (No space left on device)" in line
    text = (out / "detections.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())
    assert [r["image"] for r in records(out)] == ["a.png"]
    assert not (out / "summary.json").exists()
    monkeypatch.setattr(outputs.os, "write", real_write)
    assert detect(images, checkpoints, "--resume", out=out) == 0
    assert [r["image"] for r in records(out)] == ["a.png", "b.png", "c.png"]


# ---- 13.6: folders that cannot be listed ----------------------------------------------------


def test_unlistable_subfolder_is_reported_and_an_unlistable_root_is_an_error(
    tmp_path, checkpoints, capsys, monkeypatch
):
    images = folder(tmp_path / "images", {"a.png": data.coffee(), "locked/b.png": data.chelsea()})
    real_scandir = os.scandir

    blocked = {"locked"}

    def scandir(path="."):
        if Path(path).name in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    assert detect(images, checkpoints, "--recursive", out=out) == 1
    captured = capsys.readouterr()
    assert "cannot list locked: Permission denied" in captured.out
    assert "warning: cannot list locked: Permission denied" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unlistable"] == ["locked: Permission denied"] and summary["ok"] == 1
    blocked.add("images")
    assert detect(images, checkpoints, "--recursive", out=tmp_path / "o2") == 2
    assert f"{images}: cannot list the folder (Permission denied)" in one_error_line(capsys)


# ---- 15.7: small things ---------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, checkpoints, capsys):
    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    assert detect(images, checkpoints, "--device", "cuda", out=tmp_path / "out") == 2
    assert "cuda" in one_error_line(capsys)


def test_outputs_respect_the_umask(tmp_path, checkpoints):
    images = folder(tmp_path / "images", {"a.png": data.coffee()})
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        extra = ["--submission", str(out / "s.txt"), "--coco-results", str(out / "c.json")]
        extra += ["--save-vis", str(out / "vis"), "--vis-threshold", "0"]
        assert detect(images, checkpoints, *extra, out=out) == 0
    finally:
        os.umask(old)
    for name in ("detections.jsonl", "summary.json", "s.txt", "c.json", "vis/a.png.jpg"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_a_file_name_that_is_not_utf8_is_reported_not_a_crash(tmp_path, random_members):
    """A corrupt image whose name is not valid UTF-8: the run reports it (escaped) and exits 1,
    where the summary print used to raise UnicodeEncodeError."""
    import os
    import subprocess
    import sys

    from tests.conftest import FAST

    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(b"")  # an empty file: fails, named in the summary
    bad = os.path.join(os.fsencode(images), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    checkpoints = [str(p) for p in sorted(random_members.glob("member_*.safetensors"))]
    argv = [sys.executable, "-m", "detector.run", "--images", str(images), "--no-progress"]
    argv += ["--output-dir", str(tmp_path / "out"), "--checkpoints", *checkpoints, *FAST]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "INCEPTION_RCNN_CACHE": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\udce9.png" in done.stdout + done.stderr
