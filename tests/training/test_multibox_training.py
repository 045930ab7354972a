"""A short real MultiBox training run on generated images, through the real pipeline:
ILSVRC-layout files on disk, the dataset reader, k-means priors, SGD, checkpoints, resume.

The configs are built by hand as the resolve step leaves them (a real ``data.root``); the
command line (``python -m proposals.multibox train``) resolves its own."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD, MultiBoxConfig, load_config
from detector.datasets import default_classes
from detector.training import scaffold
from detector.training.multibox import train_multibox
from proposals.multibox.__main__ import main as multibox_main
from proposals.multibox.model import MultiBox, MultiBoxNet, load_checkpoint

NMS_IOU = MultiBoxConfig().nms_iou
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
        "loader_workers": 0,
        "log_every": 1,
        "bn_batches": 2,
        **multibox,
    }
    items = [f"data.root={root}", "data.train_split=train", "train.device=cpu"]
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
    model = MultiBox.from_checkpoint(path, top_k=8, nms_iou=NMS_IOU)
    # the priors alone: the same slots before training (objectness ~ equal everywhere)
    priors = MultiBox(
        MultiBoxNet(8, model.net.priors),
        input_size=SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        top_k=8,
        nms_iou=NMS_IOU,
    )
    trained_cov, prior_cov = coverage(model, root, gts, top=1), coverage(priors, root, gts, top=1)
    assert trained_cov >= prior_cov + 0.2, (trained_cov, prior_cov)


def test_resume_continues_from_the_last_epoch(trained):
    root, _, out, path = trained
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 7 and state["step"] == 32
    args = ["train", "--output-dir", str(out), "--resume", *_cli(root, epochs=9)]
    assert multibox_main(args) == 0
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
        "train.device=cpu",
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
    props = MultiBox.from_checkpoint(path, top_k=8, nms_iou=NMS_IOU).propose(
        np.zeros((30, 40, 3), np.uint8)
    )
    assert props.boxes.shape[1] == 4 and (props.boxes[:, 2] <= 40).all()


def test_trains_on_train_device(tmp_path, monkeypatch, capsys):
    """MultiBox trains on ``train.device``, never ``inference.device`` (unusable here); the
    command line prints one ``MultiBox checkpoint: PATH`` line."""
    write_rectangle_dataset(tmp_path, 4)
    asked = []

    def spy(name, local_rank=0):
        asked.append(str(name))
        return resolve_device(name, local_rank)

    resolve_device = scaffold.resolve_device
    monkeypatch.setattr(scaffold, "resolve_device", spy)
    cfg = _config(tmp_path, batch_size=2, epochs=1, num_priors=4, bn_batches=0)
    cfg.inference.device = "no-such-device"
    path = train_multibox(cfg, tmp_path / "run", max_steps=1, progress=False)
    assert path.is_file() and asked == ["cpu"]
    args = ["train", "--output-dir", str(tmp_path / "cli"), "--max-steps", "1"]
    overrides = [*_cli(tmp_path, epochs=1, num_priors=4, bn_batches=0), "inference.device=cpu"]
    assert multibox_main([*args, *overrides]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"MultiBox checkpoint: {tmp_path / 'cli' / 'multibox.safetensors'}"
    )
    assert asked[-1] == "cpu"


def test_trains_a_voc_tree(tmp_path):
    """Any format open_split reads trains (here PASCAL VOC)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            tmp_path / "JPEGImages" / f"{i:06d}.jpg"
        )
        (tmp_path / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation><size><width>{SIZE}</width><height>{SIZE}</height></size><object>"
            "<name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>40</ymax>"
            "</bndbox></object></annotation>"
        )
    (tmp_path / "ImageSets/Main/train.txt").write_text("".join(f"{i:06d}\n" for i in range(4)))
    cfg = _config(tmp_path, batch_size=2, epochs=1, num_priors=4, bn_batches=0)
    cfg.data.format = "voc"
    path = train_multibox(cfg, tmp_path / "run", max_steps=1, progress=False)
    net, meta = load_checkpoint(path)
    assert net.num_priors == 4 and meta["mean"] == list(IMAGENET_MEAN)
