"""The whole pipeline, for real and small: generate data, train MultiBox and two members,
detect, evaluate; the trained ensemble must beat random scores on the same proposals, and a
stopped member training must resume where it stopped."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from detector.core.config import load_config
from detector.core.io import load_image
from detector.core.structures import Detections
from detector.datasets.demo import ensure_demo_dataset
from detector.datasets.ilsvrc import IlsvrcDet
from detector.detector import Detector
from detector.nms import per_class_nms
from detector.resolve import TRAIN_MULTIBOX, resolve_config
from detector.training.classifier import train_member
from detector.training.multibox import train_multibox
from eval.ilsvrc_ap import evaluate
from eval.submission import from_detections

pytestmark = pytest.mark.slow

OVERRIDES = [
    "proposals.selective_search.resize_width=160",
    "proposals.selective_search.workers=1",
    "proposals.multibox.num_priors=16",
    "proposals.multibox.top_k=16",
    "proposals.multibox.input_size=64",
    "proposals.multibox.epochs=2",
    "proposals.multibox.bn_batches=2",
    "model.members=2",
    "model.input_size=48",
    "model.context_pad=4",
    "train.max_steps=40",
    "train.batch_size=64",
    "train.lr=0.01",
    "train.val_every=0",
    "inference.threads=2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data, MultiBox and two members trained in a temporary folder (module-scoped: ~1 min)."""
    base = tmp_path_factory.mktemp("e2e")
    root = ensure_demo_dataset(base / "data", num_train=48, num_val=12, seed=3)
    cfg = load_config(
        "demo",
        [f"data.root={root}", f"proposals.selective_search.cache_dir={base / 'cache'}", *OVERRIDES],
    )
    cfg = resolve_config(cfg, needs=TRAIN_MULTIBOX)  # the commands resolve first, as here
    multibox = train_multibox(cfg, base / "multibox", progress=False)
    cfg.proposals.multibox.checkpoint = str(multibox)  # members train on the merged proposals
    members = [train_member(cfg, i, base / "members") for i in range(2)]
    return cfg, root, multibox, members, base


def test_trained_ensemble_beats_random_scores(trained) -> None:
    cfg, root, multibox, members, _ = trained
    detector = Detector.from_checkpoints(members, multibox, config=cfg)
    records = list(IlsvrcDet(root, "val"))
    rng = np.random.default_rng(0)
    ours, random = [], []
    for rec in records:
        image = load_image(rec.path)
        proposals = detector.proposer(image)
        probs = detector.scorer.score(detector.scorer.regions(image, proposals.boxes))
        ours.append((rec.index, detector.nms(proposals.boxes, probs)))
        noise = rng.dirichlet(np.ones(probs.shape[1]), size=len(probs)).astype(np.float32)
        boxes, scores, labels = per_class_nms(
            proposals.boxes, noise, **asdict(detector.nms_settings)
        )
        random.append((rec.index, Detections(boxes, scores, labels)))
    num_classes = len(detector.classes)
    m_ours = evaluate(records, from_detections(ours), num_classes).mAP
    m_random = evaluate(records, from_detections(random), num_classes).mAP
    print(f"val mAP: trained {m_ours:.3f}, random scores {m_random:.3f}")
    assert m_ours > max(2 * m_random, m_random + 0.1), (m_ours, m_random)


def test_member_training_resumes_where_it_stopped(trained) -> None:
    cfg, _, _, _, base = trained
    out = base / "resume"
    train_member(cfg, 0, out, max_steps=10)
    train_member(cfg, 0, out, resume=True, max_steps=20)
    steps = [
        r["step"]
        for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
        if "loss" in r and r.get("member", 0) == 0
    ]
    # 10 steps, then 10 more: no step repeated, none lost
    assert len(steps) == 20 and steps == list(range(steps[0], steps[0] + 20)), steps
