"""A short real MultiBox training run on generated images, through the real pipeline:
ILSVRC-layout files on disk, the dataset reader, k-means priors, SGD, checkpoints, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from detector.core.config import load_config
from detector.datasets import default_classes
from detector.training.multibox import main as train_main
from detector.training.multibox import train_multibox
from proposals.multibox.model import MultiBox, MultiBoxNet

SIZE = 48  # image side = network input: cheap, and still deep enough for GoogLeNet's pools


def write_rectangle_dataset(root: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """ILSVRC-layout split 'train': one bright rectangle per noise image, in quadrant i % 4.

    Returns the ground-truth boxes (float32[1, 4], pixels) of each image.
    """
    rng = np.random.default_rng(seed)
    wnid = default_classes().wnids[0]
    for sub in ("Data/DET/train", "Annotations/DET/train", "ImageSets/DET"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names, gts = [], []
    for i in range(count):
        image = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        half = SIZE // 2
        w, h = rng.integers(SIZE // 4, half, 2)
        x = (i % 2) * half + rng.integers(0, half - w + 1)
        y = (i // 2 % 2) * half + rng.integers(0, half - h + 1)
        image[y : y + h, x : x + w] = rng.integers(180, 256, 3)
        name = f"rect_{i:03d}"
        Image.fromarray(image).save(root / "Data/DET/train" / f"{name}.png")
        (root / "Annotations/DET/train" / f"{name}.xml").write_text(
            f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size>"
            f"<object><name>{wnid}</name><bndbox><xmin>{x}</xmin><xmax>{x + w - 1}</xmax>"
            f"<ymin>{y}</ymin><ymax>{y + h - 1}</ymax></bndbox></object></annotation>"
        )
        names.append(name)
        gts.append(np.array([[x, y, x + w, y + h]], np.float32))
    lines = [f"{n} {i + 1}" for i, n in enumerate(names)]
    (root / "ImageSets/DET/train.txt").write_text("\n".join(lines) + "\n")
    return gts


def _config(root: Path, **multibox):
    overrides = {
        "num_priors": 8,
        "input_size": SIZE,
        "batch_size": 8,
        # alpha 0.3 (the paper's) lets one slot win every match on 32 tiny images and regress
        # all boxes from its prior; a larger alpha keeps slots near their priors early on
        "alpha": 10.0,
        "lr": 0.003,
        "epochs": 8,
        "pretrained_backbone": False,
        "workers": 0,
        "log_every": 1,
        "bn_batches": 2,
        **multibox,
    }
    items = [f"data.root={root}", "data.train_split=train", "inference.device=cpu"]
    items += [f"proposals.multibox.{k}={v}" for k, v in overrides.items()]
    return load_config(None, items)


def coverage(model: MultiBox, root: Path, gts: list[np.ndarray], top: int) -> float:
    """Fraction of ground truths with IoU >= 0.5 to one of the image's top proposals."""
    images = [
        np.asarray(Image.open(root / f"Data/DET/train/rect_{i:03d}.png")) for i in range(len(gts))
    ]
    hits = 0
    for props, gt in zip(model.propose_batch(images), gts, strict=True):
        if len(props):
            best = box_iou(torch.from_numpy(gt), torch.from_numpy(props.boxes[:top])).max(1).values
            hits += int((best >= 0.5).sum())
    return hits / sum(len(g) for g in gts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)  # one thread: robust to busy neighbours (no OpenMP stragglers)
    root = tmp_path_factory.mktemp("rects")
    gts = write_rectangle_dataset(root, 32)
    out = root / "run"
    path = train_multibox(_config(root), out, progress=False)
    return root, gts, out, path


def test_training_lowers_loss_and_beats_the_priors(trained):
    root, gts, out, path = trained
    assert path == out / "multibox.safetensors" and path.is_file()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 8 * 4  # 32 images / batch 8 = 4 steps an epoch, 8 epochs
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert sum(r.get("event") == "checkpoint" for r in log) == 8
    model = MultiBox.from_checkpoint(path, top_k=8)
    # the priors alone: the same slots before training (objectness ~ equal everywhere)
    priors = MultiBox(MultiBoxNet(8, model.net.priors), input_size=SIZE, top_k=8)
    trained_cov, prior_cov = coverage(model, root, gts, top=1), coverage(priors, root, gts, top=1)
    assert trained_cov >= prior_cov + 0.2, (trained_cov, prior_cov)


def test_resume_continues_from_the_last_epoch(trained):
    root, _, out, path = trained
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 7 and state["step"] == 32
    assert train_main(["--output-dir", str(out), "--resume", *_cli(root, epochs=9)]) == 0
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 8 and state["step"] == 36
    steps = [
        r["step"]
        for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps[-4:] == [33, 34, 35, 36]


def _cli(root: Path, **multibox) -> list[str]:
    cfg = _config(root, **multibox)
    mb = cfg.proposals.multibox
    return [
        f"data.root={root}",
        "inference.device=cpu",
        *(
            f"proposals.multibox.{k}={getattr(mb, k)}"
            for k in (
                "num_priors",
                "input_size",
                "batch_size",
                "alpha",
                "lr",
                "epochs",
                "pretrained_backbone",
                "log_every",
                "bn_batches",
            )
        ),
    ]


def test_max_steps_empty_annotations_and_a_corrupt_image(tmp_path):
    """Images without objects train as all-negative; an unreadable image is skipped with a
    warning; max_steps stops early and still saves."""
    write_rectangle_dataset(tmp_path, 4)
    for xml in (tmp_path / "Annotations/DET/train").glob("*.xml"):
        xml.write_text(
            f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size></annotation>"
        )
    (tmp_path / "Data/DET/train/rect_002.png").write_bytes(b"not a png")
    cfg = _config(tmp_path, batch_size=2, epochs=5, num_priors=4, bn_batches=1)
    with pytest.warns(UserWarning, match="rect_002.png"):
        path = train_multibox(cfg, tmp_path / "run", max_steps=2, progress=False)
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and state["epoch"] == 0
    props = MultiBox.from_checkpoint(path).propose(np.zeros((30, 40, 3), np.uint8))
    assert props.boxes.shape[1] == 4 and (props.boxes[:, 2] <= 40).all()
