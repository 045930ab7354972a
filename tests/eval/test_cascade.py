"""Tuning the cascade (``python -m eval.cascade``): the simulated probabilities are a real
cascade ensemble's, threshold 0 is the full ensemble, the CLI runs end to end.

Members are small real GoogLeNets at 64 px whose batch-norm statistics are set on real
crops (a fresh GoogLeNet in eval mode outputs constant logits), saved as real checkpoints
and loaded through the config as the commands load them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data

from detector.build import load_ensemble
from detector.classifier import checkpoint_metadata, save_checkpoint
from detector.core.config import Config
from detector.core.structures import ClassList, Detections
from detector.ensemble import cascade_probs, cascade_reaches
from detector.warp import WarpSettings, warp_regions
from eval import cascade
from eval.agreement import detections_kept
from tests.conftest import calibrated_member, fast_config

S, P = 64, 8
WARP = WarpSettings(size=S, context_pad=P, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CLASSES = ClassList(["n01", "n02", "n03"], ["cat", "dog", "cup"])
IMAGE = data.astronaut()


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1).astype(np.float32)


@pytest.fixture(scope="module")
def members_dir(tmp_path_factory):
    """Three calibrated members saved as checkpoints (their warp in the metadata)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("cascade_members")
    crops = warp_regions(IMAGE, _boxes(48), WARP)
    for i in range(3):
        meta = checkpoint_metadata(CLASSES, WARP, config_digest="t", member=i, seed=i)
        save_checkpoint(
            folder / f"member_{i}.safetensors", calibrated_member(i, len(CLASSES) + 1, crops), meta
        )
    return folder


def _ensemble(folder, cascade_threshold: float, chunk_size: int = 16):
    cfg = Config()
    cfg.model.checkpoint_dir, cfg.model.members = str(folder), 3
    cfg.inference.precision, cfg.inference.chunk_size = "fp32", chunk_size
    cfg.inference.cascade_threshold = cascade_threshold
    return load_ensemble(cfg.model, cfg.inference, "cpu")[0]


@pytest.mark.parametrize("chunk_size", [1, 16])
def test_simulated_cascade_is_a_real_cascade_ensemble(members_dir, chunk_size, one_thread) -> None:
    """Bit for bit at one crop per forward pass. With larger chunks the real cascade runs
    members 1.. on a subset of each chunk, and a GoogLeNet's float32 output for a crop moves
    in the last bits with the batch it is in (about 1e-6; measured up to 6e-6 here)."""
    full = _ensemble(members_dir, 0.0, chunk_size)
    boxes = _boxes(16 if chunk_size == 1 else 40, seed=1)  # one crop a pass is slower
    first, mean = full.score_first_and_mean(full.regions(IMAGE, boxes))
    np.testing.assert_array_equal(mean, full.score(full.regions(IMAGE, boxes)))
    alone = _ensemble(members_dir, 0.0, chunk_size)
    alone.members, alone._runnable = alone.members[:1], alone.members[:1]  # member 0 only
    np.testing.assert_array_equal(first, alone.score(alone.regions(IMAGE, boxes)))
    foreground = 1 - first[:, 0]
    quantiles = [float(np.quantile(foreground, q)) for q in (0.25, 0.5, 0.9)]
    for t in [0.0, *quantiles, 1.0]:
        real = _ensemble(members_dir, t, chunk_size).score(full.regions(IMAGE, boxes))
        simulated = cascade_probs(first, mean, t)
        if chunk_size == 1:
            np.testing.assert_array_equal(simulated, real)
        else:
            np.testing.assert_allclose(simulated, real, atol=1e-5, rtol=0)
        reach = cascade_reaches(first, t)
        np.testing.assert_array_equal(real[~reach], first[~reach])  # member 0's own
        if 0 < t < 1:
            assert 0 < reach.sum() < len(boxes)
    assert cascade_reaches(first, 0.0).all()


def _dets(boxes, scores, labels) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
        class_names=["x"] * len(labels),
    )


def test_detections_kept_needs_same_image_class_overlap_and_score() -> None:
    ref = [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], [0.9, 0.5, 0.05], [1, 2, 1])]
    assert detections_kept(ref, ref) == (2, 2)  # the 0.05 one is not compared
    moved = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.5], [1, 3])]  # class differs
    assert detections_kept(ref, moved) == (1, 2)
    weak = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.09], [1, 2])]  # below min_score
    assert detections_kept(ref, weak) == (1, 2)
    shifted = [_dets([[4, 4, 14, 14], [20, 20, 30, 30]], [0.9, 0.5], [1, 2])]  # IoU 0.22
    assert detections_kept(ref, shifted) == (1, 2)
    assert detections_kept(ref, [_dets([], [], [])]) == (0, 2)


def test_recommend_is_the_largest_threshold_meeting_keep() -> None:
    rows = [
        {"threshold": 0.0, "kept_share": 1.0},
        {"threshold": 0.01, "kept_share": 0.999},
        {"threshold": 0.05, "kept_share": 0.99},
        {"threshold": 0.1, "kept_share": 0.985},
        {"threshold": 0.2, "kept_share": 0.95},
    ]
    assert cascade.recommend(rows, 0.99) == 0.05  # exactly at the bound counts
    assert cascade.recommend(rows, 0.999) == 0.01
    assert cascade.recommend(rows, 0.9) == 0.2
    assert cascade.recommend(rows, 1.0) == 0.0
    assert cascade.recommend(rows[1:], 1.0) is None
    assert cascade.thresholds_arg("0.1,0.05") == [0.0, 0.05, 0.1]  # 0 added, sorted


def _split_args(tree, tmp_path, *extra: str) -> list[str]:
    return ["--data-root", str(tree), "--no-progress", "--output", str(tmp_path / "c.json"), *extra]


def test_threshold_zero_is_the_full_ensemble(members_dir, tiny_tree, tmp_path, one_thread):
    """Threshold 0: every crop reaches members 1.., every detection is kept, and the mAP is
    the full ensemble's as the detector itself gives it (eval.map's way of scoring)."""
    from detector.datasets import open_split
    from detector.detector import Detector
    from detector.resolve import resolve_config
    from eval.ilsvrc_ap import evaluate
    from eval.submission import cap_per_class, from_detections

    cfg = resolve_config(fast_config(members_dir, "model.members=3"), data_root=str(tiny_tree))
    args = cascade.get_args_parser().parse_args(["--split", "val", "--thresholds", "0.2"])
    source = cascade.open_source(cfg, args)
    det = Detector.from_config(cfg)
    sweeps, errors, _ = cascade.score_source(det, source, args.thresholds, progress=False)
    assert not errors and len(sweeps) == 3
    rows = cascade.summarize(
        sweeps, args.thresholds, 3, min_score=0.0, map_of=cascade.split_map(source, sweeps, cfg)
    )
    zero = rows[0]
    assert zero["threshold"] == 0 and zero["reach_share"] == 1.0 and zero["cnn_work"] == 1.0
    assert zero["kept_share"] == 1.0 and zero["kept"] == zero["compared"] > 0
    records, classes = open_split(cfg.data, "val")
    detected = [(r.index, det.detect(r.path)) for r in records]
    for (_, d), s in zip(detected, sweeps, strict=True):
        np.testing.assert_array_equal(d.scores, s.detections[0].scores)
        np.testing.assert_array_equal(d.boxes, s.detections[0].boxes)
    arrays = cap_per_class(from_detections(detected), cfg.eval.max_per_class_total)
    full = evaluate(records, arrays, len(classes), iou=cfg.eval.iou).mAP
    assert zero["mAP"] == pytest.approx(full, nan_ok=True)
    assert 0 <= rows[1]["reach_share"] <= 1
    assert rows[1]["cnn_work"] == pytest.approx((1 + 2 * rows[1]["reach_share"]) / 3)


def test_cli_on_a_split_and_on_photos_with_a_bad_one(
    random_members, tiny_tree, tmp_path, capsys, one_thread
):
    from tests.conftest import FAST

    models = [f"model.checkpoint_dir={random_members}", "model.members=2", *FAST]
    argv = _split_args(tiny_tree, tmp_path, "--split", "val", "--thresholds", "0.01,0.5")
    assert cascade.main([*argv, *models]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "set inference.cascade_threshold=" in out
    summary = json.loads((tmp_path / "c.json").read_text())
    assert [r["threshold"] for r in summary["rows"]] == [0.0, 0.01, 0.5]
    assert summary["rows"][0]["reach_share"] == 1.0 and summary["rows"][0]["kept_share"] == 1.0
    assert summary["settings"]["split"] == "val" and summary["settings"]["num_images"] == 3
    assert summary["settings"]["members"] == 2 and summary["errors"] == []
    assert summary["recommended_threshold"] in (0.0, 0.01, 0.5)
    assert all(r["mAP"] is None or 0 <= r["mAP"] <= 1 for r in summary["rows"])

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(data.coffee()[::4, ::4]).save(photos / "coffee.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out_json = tmp_path / "photos.json"
    argv = ["--images", str(photos), "--no-progress", "--output", str(out_json)]
    assert cascade.main([*argv, *models]) == 1  # one image failed; the other was scored
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and captured.err.count("eval.cascade: failed:") == 1
    summary = json.loads(out_json.read_text())
    assert summary["settings"]["num_scored_images"] == 1 and len(summary["errors"]) == 1
    assert all(r["mAP"] is None for r in summary["rows"])
    # an input is never overwritten
    argv = ["--images", str(photos), "--no-progress", "--output", str(photos / "coffee.png")]
    assert cascade.main([*argv, *models]) == 2
    assert "would overwrite one of the images" in capsys.readouterr().err
