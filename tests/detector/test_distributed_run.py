"""Scale-out of ``detector.run``: real ``torchrun`` processes on gloo, ``--shard`` tasks, and
the lock that makes a run own its output folder.

The detector is real (tiny random-weight members, coarse selective search); every torchrun
here starts real processes, so the tests compare what they wrote on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector import run
from detector.classifier import build_googlenet, checkpoint_metadata, save_checkpoint
from detector.core.distributed import Shard
from detector.core.locks import lock_output
from detector.log_parts import list_parts, part_path
from detector.outputs import read_log
from tests.conftest import CLASSES, FAST, TINY_WARP, save_random_members

pytestmark = pytest.mark.slow

SOURCES = [data.astronaut, data.coffee, data.chelsea, data.rocket, data.camera, data.coins]


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    return [str(p) for p in save_random_members(tmp_path_factory.mktemp("members"))]


def write_images(folder: Path, n: int) -> Path:
    """``n`` small photographs (crops of six, at several sizes): distinct files and pixels."""
    folder.mkdir(parents=True)
    for i in range(n):
        image = SOURCES[i % len(SOURCES)]()
        image = image if image.ndim == 3 else np.dstack([image] * 3)
        image = cv2.resize(image, (120 + 7 * i, 100 + 3 * (i % 5)))
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"im{i:03d}.png")
    return folder


def argv(images: Path, out: Path, members: list[str], *extra: str) -> list[str]:
    return [
        "--images",
        str(images),
        "--output-dir",
        str(out),
        "--no-progress",
        "--submission",
        str(out / "submission.txt"),
        "--checkpoints",
        *members,
        *extra,
        *FAST,
    ]


def torchrun(nproc: int, args: list[str], tmp: Path, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "detector.run", *args]
    env = {**os.environ, "INCEPTION_RCNN_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, text=True, **popen)


def finished(process: subprocess.Popen) -> tuple[int, str]:
    out, _ = process.communicate(timeout=600)
    return process.returncode, out or ""


def log_records(out: Path) -> tuple[dict, list[dict]]:
    header, records, _ = read_log(out / "detections.jsonl")
    assert header is not None
    return header, records


def assert_same_records(ours: list[dict], reference: list[dict]) -> None:
    """Same images in the same order, same labels, scores and boxes within fp tolerance."""
    assert [r["image"] for r in ours] == [r["image"] for r in reference]
    for a, b in zip(ours, reference, strict=True):
        assert a["ok"] and b["ok"], (a, b)
        da, db = a["detections"], b["detections"]
        assert da["labels"] == db["labels"], a["image"]
        np.testing.assert_allclose(da["scores"], db["scores"], atol=1e-5)
        np.testing.assert_allclose(
            np.reshape(da["boxes"], (-1, 4)), np.reshape(db["boxes"], (-1, 4)), atol=1e-3
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, members) -> tuple[Path, list[dict]]:
    """One process over 24 images: what every scale-out run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    images = write_images(tmp / "images", 24)
    out = tmp / "one"
    assert run.main(argv(images, out, members)) == 0
    return images, log_records(out)[1]


def test_two_ranks_write_what_one_process_writes(tmp_path, members, reference):
    images, expected = reference
    out = tmp_path / "two"
    started = time.perf_counter()
    rc, text = finished(torchrun(2, argv(images, out, members), tmp_path, stdout=subprocess.PIPE))
    assert rc == 0, text
    print(f"2 ranks: {time.perf_counter() - started:.1f} s for {len(expected)} images")
    header, records = log_records(out)
    assert_same_records(records, expected)
    assert header == read_log(images.parent / "one" / "detections.jsonl")[0]
    assert not list_parts(out / "detections.jsonl")  # merged, then removed
    ours = (out / "submission.txt").read_text().splitlines()
    theirs = (images.parent / "one" / "submission.txt").read_text().splitlines()
    assert len(ours) == len(theirs) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["ranks"] == 2 and summary["this_run"]["processed"] == 24


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of torchrun's worker with ``RANK=rank`` (a child of the launcher)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _count_records(path: Path) -> int:
    try:
        return len(read_log(path)[1])
    except (OSError, ValueError):
        return 0


def test_a_killed_rank_then_resume_with_another_world_size(tmp_path, members, reference):
    images, expected = reference
    out = tmp_path / "killed"
    args = argv(images, out, members)
    launcher = torchrun(2, args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = part_path(out / "detections.jsonl", Shard(1, 2))
    deadline = time.monotonic() + 300
    while _count_records(part) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _rank_pid(launcher, 1)
    assert victim is not None, "rank 1 ended before it could be killed"
    os.kill(victim, signal.SIGKILL)
    rc, text = finished(launcher)
    assert rc != 0, text
    written = _count_records(part)
    assert 2 <= written < 12, f"rank 1 was not killed mid-run ({written} of 12 recorded)"
    assert read_log(out / "detections.jsonl")[1] == []  # nothing merged yet

    rc, text = finished(torchrun(3, [*args, "--resume"], tmp_path, stdout=subprocess.PIPE))
    assert rc == 0, text
    _, records = log_records(out)
    assert_same_records(records, expected)  # nothing lost, nothing twice, list order
    assert not list_parts(out / "detections.jsonl")


def test_shards_of_a_job_array_merge_into_the_whole_run(tmp_path, members, reference):
    images, expected = reference
    out = tmp_path / "array"
    args = argv(images, out, members)
    assert run.main([*args, "--shard", "1/3"]) == 0
    assert run.main([*args, "--shard", "0/3"]) == 0
    assert not (out / "detections.jsonl").exists()
    assert run.main([*args, "--shard", "0/3"]) == 2  # the same task twice: refused
    assert run.main([*args, "--shard", "0/3", "--resume"]) == 0  # nothing left to do
    assert len(list_parts(out / "detections.jsonl")) == 2
    # The merge (a whole run with --resume) detects the share nobody ran (2/3) itself.
    assert run.main([*args, "--resume"]) == 0
    _, records = log_records(out)
    assert_same_records(records, expected)
    assert not list_parts(out / "detections.jsonl")
    assert (out / "submission.txt").read_text() == (
        images.parent / "one" / "submission.txt"
    ).read_text()


@pytest.fixture(scope="module")
def confident_members(tmp_path_factory) -> list[str]:
    """Random members with He-initialised convolutions: their outputs vary from crop to crop
    (the default std-0.01 ones give every crop the same softmax, whatever the quantization)."""
    folder = tmp_path_factory.mktemp("confident")
    for i in range(2):
        torch.manual_seed(i)
        model = build_googlenet(len(CLASSES) + 1)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        meta = checkpoint_metadata(CLASSES, TINY_WARP, config_digest="test", member=i, seed=i)
        save_checkpoint(folder / f"member_{i}.safetensors", model, meta)
    return [str(p) for p in sorted(folder.glob("member_*.safetensors"))]


def test_default_int8_calibrates_alike_in_every_share(tmp_path, confident_members, reference):
    """precision auto is int8 for a run over a list (on this x86 CPU), calibrated on the
    list's first images whatever share runs: the merged shares equal the whole run."""
    images, _ = reference
    members = confident_members
    auto = ["inference.precision=auto", "inference.calibration_images=3"]
    whole = tmp_path / "whole"
    assert run.main([*argv(images, whole, members), *auto]) == 0
    header, expected = log_records(whole)
    assert header["header"]["settings"]["inference.precision"] == "int8"
    out = tmp_path / "shares"
    args = [*argv(images, out, members), *auto]
    assert run.main([*args, "--shard", "1/2"]) == 0
    assert run.main([*args, "--shard", "0/2"]) == 0
    assert run.main([*args, "--resume"]) == 0
    _, records = log_records(out)
    for ours, theirs in zip(records, expected, strict=True):
        ours["detections"].pop("timings"), theirs["detections"].pop("timings")
        assert ours == theirs  # the same quantized members: bit for bit


def test_overwrite_of_one_share_never_drops_the_whole_log(tmp_path, members, reference, capsys):
    images, _ = reference
    out = tmp_path / "whole"
    small = write_images(tmp_path / "few", 3)
    args = argv(small, out, members)
    assert run.main(args) == 0
    before = (out / "detections.jsonl").read_bytes()
    capsys.readouterr()
    assert run.main([*args, "--shard", "0/2", "--overwrite"]) == 2
    assert "replaces this share's part only" in capsys.readouterr().err
    assert (out / "detections.jsonl").read_bytes() == before


# ---- the lock -----------------------------------------------------------------------------


HOLDER = """
import sys, time
from pathlib import Path
from detector.core.distributed import Shard
from detector.core.locks import lock_output
lock = lock_output(Path(sys.argv[1]), Shard.parse(sys.argv[2]))
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def hold():
    """``hold(folder, shard)``: another live process holding ``folder``'s lock (as a run, or
    as share ``shard``); every holder still alive is killed after the test."""
    holders = []

    def start(folder: Path, shard: str = "0/1") -> subprocess.Popen:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), shard], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


def test_a_second_run_or_a_resume_beside_a_live_run_is_refused(tmp_path, members, capsys, hold):
    images = write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    args = argv(images, out, members)
    assert run.main(args) == 0
    before = (out / "detections.jsonl").read_bytes()
    holder = hold(out)
    for extra in ([], ["--resume"], ["--overwrite"], ["--shard", "0/2"]):
        capsys.readouterr()
        assert run.main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "another live run is writing here" in err and f"pid {holder.pid}" in err
        assert (out / "detections.jsonl").read_bytes() == before


def test_a_live_share_refuses_a_whole_run_but_not_another_share(tmp_path, members, capsys, hold):
    images = write_images(tmp_path / "images", 4)
    out = tmp_path / "out"
    args = argv(images, out, members)
    holder = hold(out, "0/2")
    assert run.main(args) == 2
    assert f"pid {holder.pid}" in capsys.readouterr().err
    assert run.main([*args, "--shard", "0/2"]) == 2  # the same task twice
    assert run.main([*args, "--shard", "1/2"]) == 0  # its sibling runs beside it


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path, members, capsys, hold):
    images = write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    holder = hold(out)
    holder.kill()  # SIGKILL: it never released the lock
    holder.wait()
    assert run.main(argv(images, out, members)) == 0
    err = capsys.readouterr().err
    assert f"locked by a run that stopped without finishing (pid {holder.pid}" in err
    lock = lock_output(out, Shard())  # the finished run left the folder free
    assert lock.previous is None
    lock.release()


def test_eval_map_under_torchrun_scores_what_one_process_scores(tmp_path, tiny_tree):
    """``torchrun -m eval.map`` (no --detections): the ranks detect, rank 0 scores; the
    submission and the mAP equal a one-process evaluation's."""
    from detector.datasets.classes import load_classes
    from eval.map import main as eval_map

    models = save_random_members(tmp_path / "m", classes=load_classes(tiny_tree / "map_det.txt"))
    overrides = [f"model.checkpoints=[{','.join(map(str, models))}]", "model.members=2", *FAST]
    overrides.append("inference.score_threshold=0.05")  # 7 random outputs score ~1/7 each
    common = ["--data-root", str(tiny_tree), "--split", "val", "--no-coco-check", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        eval_map([*common, "--output-dir", str(one), "--json", str(one / "map.json")] + overrides)
        == 0
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [
        "-m",
        "eval.map",
        *common,
        "--output-dir",
        str(two),
        "--json",
        str(two / "map.json"),
    ]
    env = {**os.environ, "INCEPTION_RCNN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, *overrides], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("mAP: ") == 1  # rank 0 alone reports
    ours, theirs = (json.loads((d / "map.json").read_text()) for d in (two, one))
    assert ours["classes"] == theirs["classes"]  # per class: AP, positives, detections, hits
    assert ours["mAP_classes_with_positives"] == theirs["mAP_classes_with_positives"]
    assert sum(row["num_dets"] for row in ours["classes"]) > 0
    assert (two / "val_submission.txt").read_text() == (one / "val_submission.txt").read_text()
