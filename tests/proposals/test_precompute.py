"""``python -m proposals.precompute``: real selective search (and a real MultiBox checkpoint)
over the tiny tree's split and over folders, into a real on-disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from proposals.generator import ProposalGenerator
from proposals.multibox.model import MultiBox, MultiBoxNet, save_checkpoint
from proposals.precompute import main

SS = [
    "proposals.selective_search.resize_width=100",
    "proposals.selective_search.min_side=30",
    "proposals.selective_search.workers=1",
]


def args(tree: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "--data-root",
        str(tree),
        "--split",
        "train",
        "--no-progress",
        "proposals.multibox.enabled=false",
        f"proposals.selective_search.cache_dir={cache}",
        *SS,
        *extra,
    ]


def summary(out: str) -> str:
    return [line for line in out.splitlines() if " images" in line and "cached" in line][-1]


def entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npz"))


def test_a_split_is_computed_once_then_resumed_from_the_cache(tiny_tree, tmp_path, capsys):
    cache = tmp_path / "cache"
    report = tmp_path / "report.json"
    assert main(args(tiny_tree, cache, "--json", str(report))) == 0
    first = json.loads(report.read_text())
    assert (first["images"], first["cached"], first["computed"], first["failed"]) == (6, 0, 6, [])
    assert len(entries(cache)) == 6
    assert first["boxes_per_image"] == round(first["boxes"] / 6, 1) > 10
    assert "6 images: 0 already cached, 6 computed, 0 failed" in summary(capsys.readouterr().out)
    assert main(args(tiny_tree, cache, "--json", str(report))) == 0
    again = json.loads(report.read_text())
    assert (again["cached"], again["computed"], again["boxes"]) == (6, 0, first["boxes"])


def test_shards_split_the_work_without_overlap(tiny_tree, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(args(tiny_tree, cache, "--shard", "1/2")) == 0
    assert "3 images (share 1/2): 0 already cached, 3 computed" in summary(capsys.readouterr().out)
    assert main(args(tiny_tree, cache, "--shard", "0/2")) == 0
    assert "3 images (share 0/2): 0 already cached, 3 computed" in summary(capsys.readouterr().out)
    assert main(args(tiny_tree, cache)) == 0
    assert "6 images: 6 already cached, 0 computed" in summary(capsys.readouterr().out)
    assert main(args(tiny_tree, cache, "--shard", "2/2")) == 2
    assert "need 0 <= I < N" in capsys.readouterr().err


def test_a_bad_file_is_listed_and_the_rest_go_on(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "a.jpg")
    Image.fromarray(data.coffee()[::4, ::4]).save(folder / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cache = tmp_path / "cache"
    argv = [
        "--images",
        str(folder),
        "--no-progress",
        f"proposals.selective_search.cache_dir={cache}",
    ]
    assert main([*argv, "proposals.multibox.enabled=false", *SS]) == 1
    out = capsys.readouterr().out
    assert "3 images: 0 already cached, 2 computed, 1 failed" in summary(out)
    assert any("failed:" in line and "broken.jpg" in line for line in out.splitlines())
    assert len(entries(cache)) == 2


@pytest.fixture()
def multibox_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    priors = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
    net = MultiBoxNet(3, priors).eval()
    return save_checkpoint(
        tmp_path / "mb.safetensors", net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )


def test_multibox_proposals_are_cached_by_checkpoint(tiny_tree, tmp_path, multibox_checkpoint):
    cache = tmp_path / "cache"
    mb = [
        "proposals.multibox.enabled=true",
        f"proposals.multibox.checkpoint={multibox_checkpoint}",
        "proposals.multibox.num_priors=3",
        "proposals.multibox.input_size=64",
        "proposals.multibox.top_k=3",
    ]
    argv = [a for a in args(tiny_tree, cache) if a != "proposals.multibox.enabled=false"]
    assert main([*argv, *mb]) == 0
    assert len(entries(cache)) == 12  # selective search and MultiBox for each of 6 images

    cfg = load_config(None, [*mb, f"proposals.selective_search.cache_dir={cache}", *SS])
    generator = ProposalGenerator.from_config(cfg, device="cpu")
    image = np.asarray(Image.open(next((tiny_tree / "Data" / "DET" / "train").rglob("*.JPEG"))))
    expected = MultiBox.from_checkpoint(
        multibox_checkpoint, top_k=3, nms_iou=cfg.proposals.multibox.nms_iou
    ).propose(image)
    assert generator.cached(image)

    def no_forward(images):
        raise AssertionError("MultiBox ran although its proposals are cached")

    generator.multibox.propose_batch = no_forward
    got = generator.multibox_many([image])[0]
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-4)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)


@pytest.mark.slow
def test_torchrun_ranks_share_the_split(tiny_tree, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "proposals.precompute", *args(tiny_tree, cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 images over 2 ranks: 0 already cached, 6 computed, 0 failed" in done.stdout
    assert len(entries(cache)) == 6
