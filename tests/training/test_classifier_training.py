"""A real (tiny) region-classifier training run: loss falls, resume reproduces, CLI and empty input.

The dataset is generated into tmp_path in the ILSVRC DET layout: 48x48 px noisy images with
one red or blue rectangle (2 classes). Proposals come from real selective search (MultiBox
off) into a proposal cache in tmp_path; the classifier is a real GoogLeNet at 32 px input.
The config is resolved as the command line resolves it (``detector.resolve``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from detector.core.structures import ImageRecord, Proposals
from detector.datasets import open_split, with_images
from detector.resolve import TRAIN_MEMBERS, resolve_config
from detector.train import get_args_parser, main
from detector.training.classifier import resume_key, steps_per_epoch, train_member
from detector.training.regions import RegionBatches, build_region_pool
from detector.training.scaffold import load_state
from detector.warp import WarpSettings, warp_regions

COLOURS = {1: (220, 30, 30), 2: (30, 30, 220)}


def draw(rng: np.random.Generator, size: int, cls: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """A noise image with one rectangle of class ``cls``; the box as x1, y1, x2, y2 (exclusive)."""
    img = rng.integers(100, 156, (size, size, 3)).astype(np.uint8)
    x1, y1 = rng.integers(2, size // 2, 2)
    w, h = rng.integers(size // 3, size // 2, 2)
    x2, y2 = min(x1 + w, size - 1), min(y1 + h, size - 1)
    img[y1:y2, x1:x2] = COLOURS[cls]
    return img, (int(x1), int(y1), int(x2), int(y2))


def write_dataset(root: Path, splits: dict[str, int], size: int = 48, seed: int = 0) -> Path:
    """ILSVRC-layout tree: each image holds one rectangle of class 1 (red) or 2 (blue)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "map_det.txt").write_text("n00000001 1 red\nn00000002 2 blue\n")
    for split, n in splits.items():
        for sub in ("Data", "Annotations", "ImageSets"):
            (root / sub / "DET" / (split if sub != "ImageSets" else "")).mkdir(
                parents=True, exist_ok=True
            )
        names = []
        for i in range(n):
            name = f"{split}_{i:03d}"
            cls = 1 + i % 2
            img, (x1, y1, x2, y2) = draw(rng, size, cls)
            Image.fromarray(img).save(root / "Data" / "DET" / split / f"{name}.png")
            xml = (
                f"<annotation><size><width>{size}</width><height>{size}</height></size>"
                f"<object><name>n0000000{cls}</name><bndbox><xmin>{x1}</xmin><xmax>{x2 - 1}</xmax>"
                f"<ymin>{y1}</ymin><ymax>{y2 - 1}</ymax></bndbox></object></annotation>"
            )
            (root / "Annotations" / "DET" / split / f"{name}.xml").write_text(xml)
            names.append(f"{name} {i + 1}")
        (root / "ImageSets" / "DET" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_voc_dataset(root: Path, n: int, size: int = 48, seed: int = 0) -> Path:
    """VOC-layout tree (split 'train'): rectangles labelled with two VOC class names."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        image_id = f"{i:06d}"
        cls = 1 + i % 2
        img, (x1, y1, x2, y2) = draw(rng, size, cls)
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        name = "aeroplane" if cls == 1 else "bicycle"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{size}</width><height>{size}</height></size>"
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
            f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
        )
        ids.append(image_id)
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    return root


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """KEY=VALUE overrides for a few-second run on a generated 6 + 2 image dataset."""
    root = tmp_path / "data"
    if not root.exists():
        write_dataset(root, {"train": 6, "val": 2})
    return [
        f"data.root={root}",
        "proposals.multibox.enabled=false",
        "proposals.selective_search.resize_width=96",
        "proposals.selective_search.min_side=8",
        "proposals.selective_search.ks=[50]",
        "proposals.selective_search.workers=1",
        f"proposals.selective_search.cache_dir={tmp_path / 'cache'}",
        "model.pretrained=false",
        "model.input_size=32",
        "model.context_pad=4",
        "train.batch_size=16",
        "train.lr=0.01",
        "train.epochs=1",
        "train.val_every=0",
        "train.precision=fp32",
        "train.device=cpu",
        *extra,
    ]


def tiny_config(tmp_path: Path, *extra: str):
    """The resolved config the command line would train with."""
    return resolve_config(load_config(None, tiny_overrides(tmp_path, *extra)), needs=TRAIN_MEMBERS)


def warp32() -> WarpSettings:
    return WarpSettings(size=32, context_pad=4, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def batches(pool, seed: int) -> RegionBatches:
    return RegionBatches(
        pool, None, seed=seed, batch_size=8, fg_fraction=0.25, flip=True, warp=warp32()
    )


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def map_of_checkpoint(tmp_path: Path, ckpt: Path, name: str) -> float:
    """The val mAP of one saved member scored independently: ``python -m eval.map`` runs the
    detector (load, propose, warp, score, NMS) and the devkit evaluation on it."""
    from eval import map as eval_map

    report = tmp_path / f"{name}.json"
    argv = ["--split", "val", "--json", str(report), "--no-coco-check"]
    argv += ["--output-dir", str(tmp_path / name), *tiny_overrides(tmp_path)]
    argv += [f"model.checkpoints=[{ckpt}]", "model.members=1", "inference.precision=fp32"]
    assert eval_map.main(argv) == 0
    return json.loads(report.read_text())["mAP"]


def read_log(path: Path, member: int = 0) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r.get("member") == member]


def test_loss_falls_and_checkpoint_loads(tmp_path):
    from detector.classifier import load_checkpoint

    cfg = tiny_config(tmp_path, "train.val_every=1")
    ckpt = train_member(cfg, 0, tmp_path / "out", max_steps=24)
    log = read_log(tmp_path / "out" / "train_log.jsonl")
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 24
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # below 0.74, the entropy of the label mix (96 bg : 16 : 16): it tells the classes apart
    assert np.mean(losses[-5:]) < 0.5, losses
    val = [r for r in log if "val_mAP" in r]
    assert val and val[-1]["step"] == 24  # validated at the stop, on the saved weights
    assert val[-1]["val_mAP"] == pytest.approx(map_of_checkpoint(tmp_path, ckpt, "final"), abs=1e-6)
    model, meta = load_checkpoint(ckpt)
    assert meta["classes"]["wnids"] == ["n00000001", "n00000002"]
    assert (meta["input_size"], meta["context_pad"], meta["step"]) == (32, 4, 24)
    assert meta["member"] == 0 and meta["seed"] == 0 and meta["config_digest"] == cfg.digest()
    assert model.fc.out_features == 3


def test_validation_leaves_the_model_training(tmp_path):
    """Validation scores through the inference path (Ensemble, per_class_nms, devkit mAP);
    the Ensemble puts the member in eval mode, the trainer puts it back."""
    from detector.training.classifier import build_model, prepare_split, validation_map

    cfg = tiny_config(tmp_path)
    val, classes = prepare_split(cfg, "val", torch.device("cpu"))
    model = build_model(cfg, len(classes), seed=0)
    model.train()
    m = validation_map(cfg, model, classes, val, torch.device("cpu"), "fp32")
    assert model.training
    # the same weights scored by eval.map through the detector give the same mAP
    from detector.classifier import save_checkpoint
    from detector.training.classifier import member_metadata

    meta = member_metadata(cfg, classes, member=0, seed=0, epoch=0, step=0)
    ckpt = save_checkpoint(tmp_path / "untrained.safetensors", model, meta)
    assert m == pytest.approx(map_of_checkpoint(tmp_path, ckpt, "untrained"), abs=1e-6)


def test_resume_matches_uninterrupted_run(tmp_path):
    """N steps, stop, resume (through the CLI) to 2N == 2N straight: same weights, same losses."""
    overrides = tiny_overrides(tmp_path, "train.seed=3")
    cfg = resolve_config(load_config(None, overrides), needs=TRAIN_MEMBERS)
    n = 3
    train_member(cfg, 1, tmp_path / "straight", max_steps=2 * n)
    train_member(cfg, 1, tmp_path / "resumed", max_steps=n)
    assert load_state(tmp_path / "resumed" / "member_1.state.pt")["step"] == n
    # an interrupted tail in the log (a step past the state) is dropped on resume
    with (tmp_path / "resumed" / "train_log.jsonl").open("a") as f:
        f.write(json.dumps({"member": 1, "step": n + 1, "loss": 99.0}) + "\n")
    args = ["--member", "1", "--resume", "--max-steps", str(2 * n)]
    assert main([*args, "--output-dir", str(tmp_path / "resumed"), *overrides]) == 0
    a = load_state(tmp_path / "straight" / "member_1.state.pt")
    b = load_state(tmp_path / "resumed" / "member_1.state.pt")
    assert a["step"] == b["step"] == 2 * n and a["seed"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    loss = [r["loss"] for r in read_log(tmp_path / "straight" / "train_log.jsonl", 1)]
    loss_resumed = [r["loss"] for r in read_log(tmp_path / "resumed" / "train_log.jsonl", 1)]
    assert loss == loss_resumed and len(loss) == 2 * n


def test_members_differ(tmp_path):
    cfg = tiny_config(tmp_path)
    records, _ = open_split(cfg.data, "train")
    records = with_images(records)
    boxes = [r.boxes for r in records]
    pool = build_region_pool(
        records,
        [Proposals(b, np.full(len(b), np.nan), np.zeros(len(b))) for b in boxes],
        fg_iou=0.5,
        bg_iou=0.5,
        background_from="complete",
    )
    a = batches(pool, seed=0).plan(0)[0]
    b = batches(pool, seed=1).plan(0)[0]
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, batches(pool, seed=0).plan(0)[0])
    # 12 positives: one batch shows them all
    assert steps_per_epoch(pool, batch_size=128, fg_fraction=0.25) == 1


def test_trains_a_voc_tree(tmp_path):
    """Any format open_split reads trains (here PASCAL VOC, its 20 classes)."""
    root = write_voc_dataset(tmp_path / "voc", 4)
    cfg = tiny_config(tmp_path, f"data.root={root}", "data.format=voc")
    ckpt = train_member(cfg, 0, tmp_path / "out", max_steps=2)
    from detector.classifier import load_checkpoint

    model, meta = load_checkpoint(ckpt)
    assert meta["classes"]["wnids"][:2] == ["aeroplane", "bicycle"] and model.fc.out_features == 21


def test_cli_and_empty_split(tmp_path, capsys):
    cfg_args = [
        "data.root=" + str(tmp_path / "empty"),
        "proposals.multibox.enabled=false",
        "train.device=cpu",
    ]
    empty = tmp_path / "empty"
    write_dataset(empty, {"train": 0})
    status = main(["--output-dir", str(tmp_path / "out"), "--max-steps", "1", *cfg_args])
    assert status == 1
    err = capsys.readouterr().err
    assert "no training regions" in err and err.count("\n") == 1
    assert main(["--member", "7", *cfg_args]) == 2  # demo config: members 0..5
    assert main(["bogus.key=1"]) == 2
    assert main(["data.root=" + str(tmp_path / "missing")]) == 2  # resolve: not a folder
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and all(
        line.startswith("detector.train: error: ") for line in err.splitlines()
    )


def test_help_shows_the_defaults():
    text = get_args_parser().format_help()
    assert "runs/detector" in " ".join(text.split())


def test_region_pool_image_without_objects_and_failed_image():
    with_object = ImageRecord("a", 1, None, 40, 40, [[0, 0, 10, 10]], [2])
    no_objects = ImageRecord("b", 2, None, 40, 40)
    failed = ImageRecord("c", 3, None, 40, 40, [[0, 0, 5, 5]], [1])
    props = Proposals([[0, 0, 10, 6], [20, 20, 30, 30]], [np.nan] * 2, [0, 0])
    iou = {"fg_iou": 0.5, "bg_iou": 0.5, "background_from": "complete"}
    pool = build_region_pool([with_object, no_objects, failed], [props, props, None], **iou)
    np.testing.assert_array_equal(pool.image_idx, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(pool.labels, [2, 2, 0, 0, 0])  # gt, IoU 0.6, bg; bg, bg
    assert len(build_region_pool([], [], **iou)) == 0


def test_background_only_from_images_complete_for_every_class():
    """A 2013 ILSVRC train image (complete for class 2 only) gives positives, no background,
    unless train.background_from=all (R-CNN's fine-tuning windows)."""
    partial = ImageRecord("p", 1, None, 40, 40, [[0, 0, 10, 10]], [2], complete_for=frozenset({2}))
    full = ImageRecord("f", 2, None, 40, 40, [[0, 0, 10, 10]], [1])
    props = Proposals([[0, 0, 10, 6], [20, 20, 30, 30]], [np.nan] * 2, [0, 0])
    iou = {"fg_iou": 0.5, "bg_iou": 0.5}
    pool = build_region_pool([partial, full], [props, props], **iou, background_from="complete")
    np.testing.assert_array_equal(pool.image_idx, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(pool.labels, [2, 2, 1, 1, 0])
    pool = build_region_pool([partial, full], [props, props], **iou, background_from="all")
    np.testing.assert_array_equal(pool.labels, [2, 2, 0, 1, 1, 0])
    with pytest.raises(ValueError, match="train.background_from 'some'"):
        build_region_pool([full], [props], **iou, background_from="some")


def test_flipping_the_crop_equals_warping_the_flipped_image():
    """The flip augmentation (detector.training.regions) is the mirror image's warp."""
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    boxes = np.array([[10.3, 5.2, 50.7, 40.1], [0, 0, 80, 60], [30, 20, 35, 59]], np.float32)
    mirrored = boxes.copy()
    mirrored[:, 0], mirrored[:, 2] = 80 - boxes[:, 2], 80 - boxes[:, 0]
    flipped_crops = warp_regions(image, boxes, warp32()).flip(3)
    crops_of_flipped = warp_regions(np.ascontiguousarray(image[:, ::-1]), mirrored, warp32())
    torch.testing.assert_close(flipped_crops, crops_of_flipped, atol=1e-5, rtol=0)


def test_resume_key_allows_more_epochs_only():
    base = load_config(None, [])
    assert resume_key(base) == resume_key(
        load_config(None, ["train.epochs=50", "train.max_steps=9", "train.loader_workers=2"])
    )
    assert resume_key(base) != resume_key(load_config(None, ["train.lr=0.5"]))
    assert resume_key(base) != resume_key(load_config(None, ["model.input_size=96"]))
