"""README "Train on your own data", run for real: the tiny tree exported as COCO json
(``python -m detector.datasets export-coco``), then both trainers, ``eval.recall`` and
``eval.map`` on it, and both trainers a step on a VOC tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.datasets.__main__ import main as datasets_main
from detector.train import main as train_main
from eval.map import main as map_main
from eval.recall import main as recall_main
from proposals.multibox.__main__ import main as multibox_main

SS = [
    "proposals.selective_search.resize_width=96",
    "proposals.selective_search.min_side=8",
    "proposals.selective_search.ks=[50]",
    "proposals.selective_search.workers=1",
]
TINY_MODELS = [
    "model.pretrained=false",
    "model.input_size=32",
    "model.context_pad=4",
    "model.members=1",
    "train.batch_size=16",
    "train.val_every=0",
    "train.precision=fp32",
    "train.device=cpu",
    "inference.precision=fp32",
    "inference.device=cpu",
]
MULTIBOX = [
    "proposals.multibox.num_priors=4",
    "proposals.multibox.input_size=64",
    "proposals.multibox.batch_size=2",
    "proposals.multibox.bn_batches=0",
    "proposals.multibox.pretrained_backbone=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_tiny_tree_as_coco_trains_and_evaluates(tiny_tree, tmp_path, capsys):
    coco = tmp_path / "coco"
    for split in ("train", "val"):
        out = coco / f"instances_{split}.json"
        assert datasets_main(["export-coco", "--data-root", str(tiny_tree), "--split", split,
                              "--output", str(out), "data.blacklist="]) == 0  # fmt: skip
    exported = json.loads((coco / "instances_train.json").read_text())
    assert len(exported["images"]) == 6 and len(exported["categories"]) == 6
    assert all(not Path(i["file_name"]).is_absolute() for i in exported["images"])
    data = [
        "data.format=coco",
        f"data.root={tiny_tree}",
        f"data.coco_annotations={coco}/instances_{{split}}.json",
        "data.blacklist=",
        f"proposals.selective_search.cache_dir={tmp_path / 'cache'}",
        *SS,
    ]
    mb_dir, members = tmp_path / "mb", tmp_path / "members"
    args = ["train", "--output-dir", str(mb_dir), "--max-steps", "1"]
    assert multibox_main([*args, *data, *MULTIBOX, "train.device=cpu"]) == 0
    mb = [f"proposals.multibox.checkpoint={mb_dir / 'multibox.safetensors'}", *MULTIBOX]
    args = ["--output-dir", str(members), "--member", "0", "--max-steps", "2"]
    assert train_main([*args, *data, *mb, *TINY_MODELS]) == 0
    assert (members / "member_0.safetensors").is_file()
    capsys.readouterr()
    assert recall_main(["--split", "val", *data, *mb]) == 0
    val_boxes = len(json.loads((coco / "instances_val.json").read_text())["annotations"])
    assert f"ground truths: {val_boxes} in 3 images" in capsys.readouterr().out
    report = tmp_path / "map.json"
    argv = ["--split", "val", "--output-dir", str(tmp_path / "eval"), "--json", str(report)]
    argv += ["--no-coco-check", "--no-progress"]
    models = [f"model.checkpoint_dir={members}", *TINY_MODELS, "inference.score_threshold=0.01"]
    assert map_main([*argv, *data, *mb, *models]) == 0
    result = json.loads(report.read_text())
    assert result["num_classes_with_positives"] >= 1
    assert sum(row["npos"] for row in result["classes"]) == val_boxes


def test_both_trainers_take_a_voc_tree(tmp_path):
    from tests.training.test_classifier_training import write_voc_dataset

    root = write_voc_dataset(tmp_path / "voc", 4)
    data = [
        f"data.root={root}",
        "data.format=voc",
        "data.blacklist=",
        f"proposals.selective_search.cache_dir={tmp_path / 'cache'}",
        *SS,
    ]
    args = ["train", "--output-dir", str(tmp_path / "mb"), "--max-steps", "1"]
    assert multibox_main([*args, *data, *MULTIBOX, "train.device=cpu"]) == 0
    mb = [f"proposals.multibox.checkpoint={tmp_path / 'mb' / 'multibox.safetensors'}", *MULTIBOX]
    args = ["--output-dir", str(tmp_path / "members"), "--member", "0", "--max-steps", "1"]
    assert train_main([*args, *data, *mb, *TINY_MODELS, "data.train_split=train"]) == 0
