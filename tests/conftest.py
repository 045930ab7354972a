"""Shared fixtures: random-weight members saved as real checkpoints, fast settings, a tiny
ILSVRC tree written by the project's own writer (the demo generator)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.classifier import build_googlenet, checkpoint_metadata, save_checkpoint
from detector.core.config import Config, load_config
from detector.core.structures import ClassList
from detector.warp import WarpSettings

CLASSES = ClassList(["n01", "n02", "n03"], ["cat", "dog", "cup"])
# 32 px crops with 4 px of context: a random GoogLeNet scores a crop in about a millisecond.
TINY_WARP = WarpSettings(
    size=32, context_pad=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
# Small crops and coarse selective search keep every detection around a second.
FAST = [
    "proposals.multibox.enabled=false",
    "proposals.selective_search.resize_width=100",
    "proposals.selective_search.min_side=30",
    "proposals.selective_search.cache_dir=none",
    "inference.precision=fp32",
    "inference.score_threshold=0.2",
    "inference.threads=1",  # the suite shares 2 cores: one thread is far cheaper under load
]


def save_random_members(
    folder: Path, n: int = 2, classes: ClassList = CLASSES, warp: WarpSettings = TINY_WARP
) -> list[Path]:
    """``n`` random-weight GoogLeNets (seeds 0..n-1) saved as real member checkpoints."""
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        meta = checkpoint_metadata(classes, warp, config_digest="test", member=i, seed=i)
        model = build_googlenet(len(classes) + 1)
        paths.append(save_checkpoint(folder / f"member_{i}.safetensors", model, meta))
    return paths


def calibrated_member(seed: int, num_outputs: int, crops: torch.Tensor) -> torch.nn.Module:
    """A random GoogLeNet whose batch-norm statistics are those of ``crops`` (real warped
    crops) and whose logits spread by about 2: a freshly initialised one in eval mode gives
    every crop the same output, which would make any comparison vacuous."""
    torch.manual_seed(seed)
    model = build_googlenet(num_outputs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: statistics of exactly these crops
    model.train()
    with torch.no_grad():
        model(crops[:32])
    model.eval()
    with torch.no_grad():
        model.fc.weight *= 2.0 / model(crops).std()
    return model


def fast_config(models: Path | list, *extra: str) -> Config:
    """The demo config with the random members of ``models`` (a folder or a list of files)
    and the FAST settings; not resolved."""
    where = (
        [f"model.checkpoint_dir={models}"]
        if isinstance(models, Path)
        else [
            f"model.checkpoints=[{','.join(str(m) for m in models)}]",
            f"model.members={len(models)}",
        ]
    )
    return load_config(None, ["model.members=2", *where, *FAST, *extra])


@pytest.fixture()
def one_thread():
    """torch on one thread for the test (the suite shares 2 cores), restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def random_members(tmp_path_factory) -> Path:
    """A folder with two random-weight 3-class members (``member_0/1.safetensors``)."""
    folder = tmp_path_factory.mktemp("members")
    save_random_members(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """A tiny ILSVRC DET tree (6 train + 3 val images, 6 classes) by the demo generator."""
    from detector.datasets.demo import ensure_demo_dataset

    return ensure_demo_dataset(
        tmp_path_factory.mktemp("tree") / "ilsvrc", num_train=6, num_val=3, seed=1
    )
